//! [`FaultyGuard`] (the `test-support` feature): wraps any [`GuardFirewall`] and makes chosen
//! calls fail as AWS's do, or never answer (a process that dies mid-call), in the style of
//! mountpoint-s3's failure client. Which call fails, how and how often is the test's choice, so
//! a run is exact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use portcullis_core::Route;
use portcullis_core::guard::{GroupRule, GuardRule, GuardScope, GuardedGroup};

use crate::{ErrorClass, FirewallError, GuardFirewall};

/// A guard firewall call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardCall {
    Guarded,
    Revoke,
    Authorize,
    Modify,
    Identity,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardFault {
    /// The call fails with this class of error; nothing is changed.
    Fail(ErrorClass),
    /// The call never answers (a timeout, or the process dying mid-call); nothing is changed.
    Hang,
}

#[derive(Default)]
struct State {
    /// Per call: the fault, and how many more calls it strikes (`None`: every one).
    faults: BTreeMap<GuardCall, (GuardFault, Option<usize>)>,
    injected: BTreeMap<GuardCall, usize>,
}

/// A guard firewall whose chosen calls fail.
pub struct FaultyGuard {
    inner: Arc<dyn GuardFirewall>,
    state: Mutex<State>,
    /// Told each time a call hangs.
    hung: tokio::sync::Notify,
}

impl FaultyGuard {
    pub fn new(inner: Arc<dyn GuardFirewall>) -> FaultyGuard {
        FaultyGuard { inner, state: Mutex::default(), hung: tokio::sync::Notify::new() }
    }

    /// Makes the next `times` calls of `call` (every one, with `None`) meet `fault`.
    pub fn inject(&self, call: GuardCall, fault: GuardFault, times: Option<usize>) {
        self.state().faults.insert(call, (fault, times));
    }

    /// Ends every injected fault: calls go through again.
    pub fn heal(&self) {
        self.state().faults.clear();
    }

    /// Returns once a call hangs (at once, if one hung since the last wait).
    pub async fn hung(&self) {
        self.hung.notified().await;
    }

    /// How many calls of `call` met a fault.
    pub fn injected(&self, call: GuardCall) -> usize {
        self.state().injected.get(&call).copied().unwrap_or(0)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fault this call meets, if any (counted, and used up when it had a count).
    fn strike(&self, call: GuardCall) -> Result<(), GuardFault> {
        let mut state = self.state();
        let Some((fault, left)) = state.faults.get(&call).copied() else { return Ok(()) };
        match left {
            Some(0) => return Ok(()),
            Some(n) => {
                state.faults.insert(call, (fault, Some(n - 1)));
            }
            None => {}
        }
        *state.injected.entry(call).or_default() += 1;
        Err(fault)
    }

    async fn gate(&self, call: GuardCall) -> Result<(), FirewallError> {
        match self.strike(call) {
            Ok(()) => Ok(()),
            Err(GuardFault::Fail(class)) => Err(FirewallError::new(class, format!("{call:?} failed (injected)"))),
            Err(GuardFault::Hang) => {
                self.hung.notify_one();
                std::future::pending().await
            }
        }
    }
}

#[async_trait]
impl GuardFirewall for FaultyGuard {
    async fn guarded(&self, scope: &GuardScope) -> Result<Vec<GuardedGroup>, FirewallError> {
        self.gate(GuardCall::Guarded).await?;
        self.inner.guarded(scope).await
    }

    async fn revoke(&self, route: &Route, group_id: &str, ids: &[String], rules: &[GuardRule]) -> Result<(), FirewallError> {
        self.gate(GuardCall::Revoke).await?;
        self.inner.revoke(route, group_id, ids, rules).await
    }

    async fn authorize(&self, route: &Route, group_id: &str, rules: &[GuardRule]) -> Result<Vec<GroupRule>, FirewallError> {
        self.gate(GuardCall::Authorize).await?;
        self.inner.authorize(route, group_id, rules).await
    }

    async fn modify(&self, route: &Route, group_id: &str, rule_id: &str, rule: &GuardRule) -> Result<(), FirewallError> {
        self.gate(GuardCall::Modify).await?;
        self.inner.modify(route, group_id, rule_id, rule).await
    }

    async fn identity(&self, route: &Route) -> Result<String, FirewallError> {
        self.gate(GuardCall::Identity).await?;
        self.inner.identity(route).await
    }
}
