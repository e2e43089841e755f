//! Operating ledgerd: metrics, the worker's health, and the endpoints.

pub mod health;
pub mod http;
pub mod metrics;
pub mod names;
pub mod sampler;
