//! The desired state of every service: what the controller wants each one to do, and who wins
//! when the store and a buddy disagree.
//!
//! [`Desired`] is the controller's copy of the store's `desired` column, read once before the
//! loop ([`Store::desired_all`]) and kept in step by the controller, the store's only writer:
//! the loop reads it without a round trip to the writer thread, and every change is also sent
//! to the writer as a queued write. Removed services keep their entry, as in the store, so
//! one that comes back keeps its wish.
//!
//! The decisions are pure functions: [`rendered_initial`] (a service the store knows is
//! rendered with the store's desired state, so `InitialState` applies only to newly configured
//! ones), [`initial_want`] (what a new service is recorded with) and [`reconcile`] (a buddy's
//! first status after the controller starts against the store, decided by
//! `PreferBuddyStateForStopped`/`PreferBuddyStateForRunning`).
//!
//! [`Store::desired_all`]: crate::store::Store::desired_all

use std::collections::BTreeMap;
use upk_core::config::InitialState;
use upk_core::proto::BuddyRequest;
use upk_core::status::Want;

/// The desired state of each service the store knows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    wants: BTreeMap<String, Want>,
}

impl Desired {
    /// The desired states as the store has them.
    pub fn new(wants: BTreeMap<String, Want>) -> Desired {
        Desired { wants }
    }

    /// What is wanted for `id`, if the store has a wish for it.
    pub fn of(&self, id: &str) -> Option<Want> {
        self.wants.get(id).copied()
    }

    /// Records `want` for `id` (the caller also queues the write to the store).
    pub fn set(&mut self, id: &str, want: Want) {
        self.wants.insert(id.to_owned(), want);
    }

    /// `id` was unconfigured: it has no wish until it is configured again.
    pub fn forget(&mut self, id: &str) {
        self.wants.remove(id);
    }

    /// A service was configured: it gets `initial` unless it has a wish already (what
    /// [`Store::configure`] does to the stored row). Returns the wish it had.
    ///
    /// [`Store::configure`]: crate::store::Store::configure
    pub fn configured(&mut self, id: &str, initial: Want) -> Option<Want> {
        let had = self.of(id);
        self.wants.entry(id.to_owned()).or_insert(initial);
        had
    }
}

/// The desired state a newly configured service is recorded with.
pub fn initial_want(initial: InitialState) -> Want {
    match initial {
        InitialState::Running => Want::Up,
        InitialState::Stopped => Want::Down,
    }
}

/// The `InitialState` a service is rendered with: the store's wish wins over the configured
/// one; `once` (not an initial state) leaves the configured one.
pub fn rendered_initial(configured: InitialState, stored: Option<Want>) -> InitialState {
    match stored {
        Some(Want::Up) => InitialState::Running,
        Some(Want::Down) => InitialState::Stopped,
        Some(Want::Once) | None => configured,
    }
}

/// Who was followed when the store and a buddy disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The buddy is told to do what the store wants.
    Store,
    /// The store takes the buddy's state (`PreferBuddyState*`).
    Buddy,
}

/// The outcome of [`reconcile`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// What to tell the buddy (`None` when the buddy wins).
    pub tell: Option<BuddyRequest>,
    /// The desired state to record.
    pub want: Want,
    /// Who won.
    pub winner: Winner,
}

/// A buddy's first status after the controller starts, against the store's wish: `None` when
/// they agree (or the store has no wish, or wants `once`). A buddy that wants `once` counts as
/// up. Stored up but the buddy down: the buddy wins with `PreferBuddyStateForStopped`, else it
/// is started; stored down but the buddy up: the buddy wins with `PreferBuddyStateForRunning`,
/// else it is stopped.
pub fn reconcile(
    stored: Option<Want>,
    buddy: Want,
    prefer_stopped: bool,
    prefer_running: bool,
) -> Option<Reconciled> {
    let buddy_up = buddy != Want::Down;
    let (tell, want) = match (stored?, buddy_up) {
        (Want::Up, false) if prefer_stopped => (None, Want::Down),
        (Want::Up, false) => (Some(BuddyRequest::Start), Want::Up),
        (Want::Down, true) if prefer_running => (None, Want::Up),
        (Want::Down, true) => (Some(BuddyRequest::Stop), Want::Down),
        _ => return None,
    };
    let winner = if tell.is_some() {
        Winner::Store
    } else {
        Winner::Buddy
    };
    Some(Reconciled { tell, want, winner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_and_no_wish_change_nothing() {
        for prefer in [(false, false), (true, true), (true, false), (false, true)] {
            let (s, r) = prefer;
            assert_eq!(reconcile(None, Want::Up, s, r), None);
            assert_eq!(reconcile(None, Want::Down, s, r), None);
            assert_eq!(reconcile(Some(Want::Up), Want::Up, s, r), None);
            assert_eq!(reconcile(Some(Want::Up), Want::Once, s, r), None);
            assert_eq!(reconcile(Some(Want::Down), Want::Down, s, r), None);
            for buddy in [Want::Up, Want::Down, Want::Once] {
                assert_eq!(reconcile(Some(Want::Once), buddy, s, r), None);
            }
        }
    }

    #[test]
    fn stored_up_and_a_stopped_buddy_start_it_unless_prefer_buddy_state_for_stopped() {
        assert_eq!(
            reconcile(Some(Want::Up), Want::Down, false, false),
            Some(Reconciled {
                tell: Some(BuddyRequest::Start),
                want: Want::Up,
                winner: Winner::Store
            })
        );
        assert_eq!(
            reconcile(Some(Want::Up), Want::Down, true, false),
            Some(Reconciled {
                tell: None,
                want: Want::Down,
                winner: Winner::Buddy
            })
        );
        assert_eq!(
            reconcile(Some(Want::Up), Want::Down, false, true).map(|r| r.winner),
            Some(Winner::Store),
            "PreferBuddyStateForRunning does not apply to a stopped buddy"
        );
    }

    #[test]
    fn stored_down_and_a_running_buddy_stop_it_unless_prefer_buddy_state_for_running() {
        for buddy in [Want::Up, Want::Once] {
            assert_eq!(
                reconcile(Some(Want::Down), buddy, false, false),
                Some(Reconciled {
                    tell: Some(BuddyRequest::Stop),
                    want: Want::Down,
                    winner: Winner::Store
                })
            );
            assert_eq!(
                reconcile(Some(Want::Down), buddy, false, true),
                Some(Reconciled {
                    tell: None,
                    want: Want::Up,
                    winner: Winner::Buddy
                })
            );
            assert_eq!(
                reconcile(Some(Want::Down), buddy, true, false).map(|r| r.winner),
                Some(Winner::Store)
            );
        }
    }

    #[test]
    fn the_store_wins_over_initial_state_except_for_once() {
        use InitialState::{Running, Stopped};
        assert_eq!(rendered_initial(Stopped, Some(Want::Up)), Running);
        assert_eq!(rendered_initial(Running, Some(Want::Down)), Stopped);
        assert_eq!(rendered_initial(Running, Some(Want::Once)), Running);
        assert_eq!(rendered_initial(Stopped, Some(Want::Once)), Stopped);
        assert_eq!(rendered_initial(Stopped, None), Stopped);
        assert_eq!(initial_want(Running), Want::Up);
        assert_eq!(initial_want(Stopped), Want::Down);
    }

    #[test]
    fn a_configured_service_keeps_its_wish_and_a_new_one_gets_its_initial_state() {
        let mut d = Desired::new(BTreeMap::from([("old".to_owned(), Want::Down)]));
        assert_eq!(d.configured("old", Want::Up), Some(Want::Down));
        assert_eq!(d.of("old"), Some(Want::Down));
        assert_eq!(d.configured("new", Want::Up), None);
        assert_eq!(d.of("new"), Some(Want::Up));
        d.set("new", Want::Once);
        assert_eq!(d.configured("new", Want::Down), Some(Want::Once));
        assert_eq!(d.of("nobody"), None);
    }
}
