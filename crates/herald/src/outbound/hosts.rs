//! Host-wide connection budgets: a `host` stanza's `max_outbound_connections` caps every connection to that host
//! together, across every (binding, domain) pool that routes there (docs/configuration.md, "Bindings in delivery").
//!
//! [`HostBudgets`] holds one [`HostBudget`] per host stanza and route host, shared by every pool whose settings
//! name it; a pool takes a [`HostSlot`] before it opens a connection and the slot goes back when that connection
//! has closed (or the attempt failed). A reload changes a budget's limit in place: slots already taken stay
//! taken, and pools drain their newest connections while the host is over its cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The connections allowed to one host, and how many are open or being opened.
#[derive(Debug)]
pub struct HostBudget {
    /// Which stanza and host this is (`host "api.push.apple.com"`, `binding "b" host "h"` …), for logs.
    name: Arc<str>,
    limit: AtomicUsize,
    taken: AtomicUsize,
    /// Of the taken slots, those whose connection is draining (finishing what it carries before it closes).
    draining: AtomicUsize,
    /// Pools that have work and no slot: pools with idle connections give theirs up for them.
    waiters: AtomicUsize,
}

impl HostBudget {
    fn new(name: Arc<str>, limit: usize) -> Arc<Self> {
        Arc::new(HostBudget {
            name,
            limit: AtomicUsize::new(limit),
            taken: AtomicUsize::new(0),
            draining: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Connections open or being opened to the host, over every pool.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether more connections are open than the cap allows (after a reload lowered it).
    pub fn is_over(&self) -> bool {
        self.taken() > self.limit()
    }

    /// How many serving connections (open, not draining) are beyond the cap: the pools drain that many.
    pub fn excess(&self) -> usize {
        let serving = self
            .taken()
            .saturating_sub(self.draining.load(Ordering::Acquire));
        serving.saturating_sub(self.limit())
    }

    /// Whether pools wait for a slot that idle connections elsewhere hold: more waiters than connections draining.
    pub fn has_unserved_waiters(&self) -> bool {
        self.waiters.load(Ordering::Acquire) > self.draining.load(Ordering::Acquire)
    }

    /// A slot for one more connection, unless the host has all it may have.
    pub fn try_take(self: &Arc<Self>) -> Option<HostSlot> {
        let limit = self.limit();
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| HostSlot {
                budget: self.clone(),
                draining: false,
            })
    }
}

/// One connection's share of its host's budget; given back when dropped. A draining connection keeps its slot
/// until it has closed (the cap counts it), but no longer counts as serving (see [`HostBudget::excess`]).
#[derive(Debug)]
pub struct HostSlot {
    budget: Arc<HostBudget>,
    draining: bool,
}

impl HostSlot {
    /// Records that the connection holding this slot is draining.
    pub fn set_draining(&mut self) {
        if !self.draining {
            self.draining = true;
            self.budget.draining.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        if self.draining {
            self.budget.draining.fetch_sub(1, Ordering::AcqRel);
        }
        self.budget.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pool's place in line for a slot of its host's budget: counted while it lives.
#[derive(Debug)]
pub struct HostWaiter(Arc<HostBudget>);

impl HostWaiter {
    pub fn new(budget: &Arc<HostBudget>) -> Self {
        budget.waiters.fetch_add(1, Ordering::AcqRel);
        HostWaiter(budget.clone())
    }
}

impl Drop for HostWaiter {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every host budget of the process, by the stanza that sets it and the route host.
#[derive(Debug, Default)]
pub struct HostBudgets {
    budgets: Mutex<HashMap<(String, String), Arc<HostBudget>>>,
}

impl HostBudgets {
    pub fn new() -> Self {
        HostBudgets::default()
    }

    /// The budget of connections to `host` capped by the stanza `scope` (see
    /// `herald_conf::Config::host_connection_cap`) at `limit` (at least 1), made on first use; an existing
    /// budget takes the new limit (a reload).
    pub fn budget(&self, scope: &str, host: &str, limit: usize) -> Arc<HostBudget> {
        let limit = limit.max(1);
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let budget = budgets
            .entry((scope.to_owned(), host.to_owned()))
            .or_insert_with(|| HostBudget::new(Arc::from(format!("{scope} ({host})")), limit));
        budget.limit.store(limit, Ordering::Release);
        budget.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_shared_by_every_holder_of_a_budget_and_come_back_when_dropped() {
        let budgets = HostBudgets::new();
        let a = budgets.budget("host \"h\"", "h", 2);
        let b = budgets.budget("host \"h\"", "h", 2);
        let one = a.try_take().expect("first slot");
        let _two = b.try_take().expect("second slot");
        assert!(a.try_take().is_none(), "the cap covers both holders");
        drop(one);
        assert!(b.try_take().is_some());
    }

    #[test]
    fn different_stanzas_or_hosts_have_different_budgets() {
        let budgets = HostBudgets::new();
        let a = budgets.budget("host \"h\"", "h", 1);
        let b = budgets.budget("binding \"b\" host \"h\"", "h", 1);
        let c = budgets.budget("host \"h\"", "other", 1);
        let _s = a.try_take().expect("slot");
        assert!(b.try_take().is_some());
        assert!(c.try_take().is_some());
    }

    #[test]
    fn a_reload_changes_the_limit_in_place() {
        let budgets = HostBudgets::new();
        let a = budgets.budget("host \"h\"", "h", 3);
        let _s: Vec<_> = (0..3).filter_map(|_| a.try_take()).collect();
        budgets.budget("host \"h\"", "h", 2);
        assert_eq!(a.limit(), 2);
        assert!(a.is_over());
        assert_eq!(a.excess(), 1);
        assert!(a.try_take().is_none());
    }

    #[test]
    fn waiters_are_unserved_until_as_many_connections_drain() {
        let budgets = HostBudgets::new();
        let a = budgets.budget("host \"h\"", "h", 1);
        let mut slot = a.try_take().expect("slot");
        assert!(!a.has_unserved_waiters());
        let waiter = HostWaiter::new(&a);
        assert!(a.has_unserved_waiters());
        slot.set_draining();
        assert!(!a.has_unserved_waiters());
        drop(slot);
        assert!(a.has_unserved_waiters());
        drop(waiter);
        assert!(!a.has_unserved_waiters());
    }

    #[test]
    fn a_draining_connection_holds_its_slot_but_is_not_excess() {
        let budgets = HostBudgets::new();
        let a = budgets.budget("host \"h\"", "h", 2);
        let mut slots: Vec<_> = (0..2).filter_map(|_| a.try_take()).collect();
        budgets.budget("host \"h\"", "h", 1);
        assert_eq!(a.excess(), 1);
        slots[1].set_draining();
        assert_eq!(a.excess(), 0);
        assert!(a.try_take().is_none(), "still open: the cap counts it");
        slots.pop();
        assert_eq!(a.taken(), 1);
        assert!(a.try_take().is_none());
    }
}
