//! The command service's memory of the tips its own appends left (version and balance per
//! account), so the next load of an account may skip reading its tip. A hint, never a
//! source of truth: the service trusts it only where a stale tip ends in a conflict (see
//! `CommandService::plan_all`). Must never grow without bound.

use std::collections::HashMap;

use crate::domain::{AccountId, AccountState};

/// Tips the service's own appends left, per account, so a load may skip reading them
/// (DynamoDB: one query per account). A hint only: see `CommandService::plan_all`.
/// Bounded: cleared whole when full (the next load of each account reads its tip again).
#[derive(Debug, Default)]
pub(crate) struct Tips {
    entries_max: usize,
    map: std::sync::Mutex<HashMap<AccountId, AccountState>>,
}

impl Tips {
    pub(crate) fn new(entries_max: usize) -> Tips {
        Tips {
            entries_max,
            map: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, AccountState>> {
        // A hint: a panic mid-update leaves at worst a stale entry, which a conflict corrects.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, account: &AccountId) -> Option<AccountState> {
        if self.entries_max == 0 {
            return None;
        }
        self.lock().get(account).copied()
    }

    pub(crate) fn put(&self, account: &AccountId, tip: AccountState) {
        if self.entries_max == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.entries_max && !map.contains_key(account) {
            map.clear();
        }
        map.insert(account.clone(), tip);
    }

    pub(crate) fn forget(&self, account: &AccountId) {
        if self.entries_max > 0 {
            self.lock().remove(account);
        }
    }
}
