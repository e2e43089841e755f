//! The pure core: amounts, keys, action parsing and split math.
//! Pure code only: no I/O, no runtime and no store types live here.

pub mod action;
pub mod decimal;
pub mod keys;
pub mod marker;
pub mod shard;
pub mod split;
pub mod time;
pub mod units;

pub use action::{plan_action, ActionError, Credit, Mode, Plan};
pub use marker::{FoundName, Marker, MarkerName, Markers};
pub use units::{Units, TOTAL_SUPPLY_UNITS, UNITS_PER_TOKEN};
