//! A wallet as `audit` and `adjust` read it: the balance as found (valid
//! or not), its markers and its CAS, with the [`State`] a write of it is
//! built on.

use super::{fetch, State};
use crate::domain::{MarkerName, Markers, Units};
use crate::protocol::Result;
use crate::store::{Cas, Store};

/// One wallet as read: its balance (`None`: no document; `Err`: not a
/// valid balance), its markers and its CAS.
#[derive(Debug, Clone)]
pub struct WalletView {
    /// The balance, if there is a document.
    pub balance: Option<std::result::Result<u64, String>>,
    /// Its markers.
    pub markers: Markers,
    /// The CAS of the read ([`LOCKED_CAS`](crate::store::LOCKED_CAS) while locked).
    pub cas: Cas,
}

impl WalletView {
    pub(crate) fn has(&self, name: &MarkerName) -> bool {
        self.markers.contains(name)
    }

    /// The wallet state this view read (what a write of it is built on).
    pub(crate) fn state(&self) -> State {
        match &self.balance {
            None => State::Absent,
            Some(Ok(units)) => match Units::new(*units) {
                Ok(balance) => State::Present {
                    balance,
                    cas: self.cas,
                    markers: self.markers.clone(),
                },
                Err(e) => State::Invalid {
                    reason: e.to_string(),
                    cas: self.cas,
                    markers: self.markers.clone(),
                },
            },
            Some(Err(reason)) => State::Invalid {
                reason: reason.clone(),
                cas: self.cas,
                markers: self.markers.clone(),
            },
        }
    }
}

/// Reads one wallet: body, markers and CAS, atomically.
pub async fn read_wallet(store: &dyn Store, hash: &str) -> Result<WalletView> {
    Ok(match fetch(store, hash).await? {
        Some((body, markers, cas)) => WalletView {
            balance: Some(Units::parse_balance(&body).map(Units::get).map_err(|e| e.to_string())),
            markers,
            cas,
        },
        None => WalletView {
            balance: None,
            markers: Markers::default(),
            cas: 0,
        },
    })
}
