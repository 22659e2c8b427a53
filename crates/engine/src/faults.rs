//! [`FaultyFirewall`] (the `test-support` feature): wraps any [`Firewall`] and makes its calls
//! fail the ways AWS's do, drawn from a seeded RNG, in the style of mountpoint-s3's failure
//! client. A seed reproduces a run exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use portcullis_core::{GroupChange, TargetSpec};

use crate::{Applied, ErrorClass, Firewall, FirewallError, Observation, ObserveFailure};

/// A failure the wrapper injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A region's describe fails (throttled, unavailable or timed out).
    ObserveFailed,
    /// `RequestLimitExceeded`, nothing applied.
    Throttled,
    /// A 5xx (`Unavailable`), nothing applied.
    ServerError,
    /// No answer (a timeout), nothing applied.
    TimeoutBefore,
    /// No answer (a timeout), but the whole change took effect.
    TimeoutAfter,
    /// Some of the change took effect, then a 5xx (as moto answers a batch that fails midway).
    Partial,
    /// `InvalidGroup.NotFound`, nothing applied.
    GroupNotFound,
    /// `RulesPerSecurityGroupLimitExceeded`, nothing applied.
    Quota,
}

const APPLY_FAULTS: [Fault; 7] = [
    Fault::Throttled,
    Fault::ServerError,
    Fault::TimeoutBefore,
    Fault::TimeoutAfter,
    Fault::Partial,
    Fault::GroupNotFound,
    Fault::Quota,
];

struct State {
    rng: u64,
    /// Chance of a fault per call, in parts per million.
    rate: u64,
    injected: BTreeMap<Fault, u64>,
}

impl State {
    /// splitmix64: small, fast and good enough to pick faults.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn strikes(&mut self) -> bool {
        self.below(1_000_000) < self.rate
    }

    fn count(&mut self, fault: Fault) -> Fault {
        *self.injected.entry(fault).or_default() += 1;
        fault
    }
}

/// A firewall whose calls fail, at a rate the test sets, from a seeded RNG.
pub struct FaultyFirewall {
    inner: Arc<dyn Firewall>,
    state: Mutex<State>,
}

impl FaultyFirewall {
    /// Wraps `inner`; no faults until [`FaultyFirewall::set_rate`].
    pub fn new(inner: Arc<dyn Firewall>, seed: u64) -> FaultyFirewall {
        FaultyFirewall { inner, state: Mutex::new(State { rng: seed, rate: 0, injected: BTreeMap::new() }) }
    }

    /// The chance, from 0 to 1, that a call fails.
    pub fn set_rate(&self, rate: f64) {
        self.state().rate = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u64;
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.state().injected.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn error(class: ErrorClass, message: &str) -> FirewallError {
    FirewallError::new(class, format!("{message} (injected)"))
}

#[async_trait]
impl Firewall for FaultyFirewall {
    async fn observe(&self, specs: &[TargetSpec]) -> Observation {
        let failed = {
            let mut state = self.state();
            if specs.is_empty() || !state.strikes() {
                None
            } else {
                state.count(Fault::ObserveFailed);
                let region = specs[state.below(specs.len() as u64) as usize].region.clone();
                let why = ["throttled", "the service is unavailable", "the request timed out"][state.below(3) as usize];
                Some((region, why))
            }
        };
        let Some((region, why)) = failed else { return self.inner.observe(specs).await };
        // The other regions are observed as usual; the spec indexes stay those of `specs`.
        let mut observation = self.inner.observe(specs).await;
        observation.groups.retain(|g| g.id.region != region);
        observation.failures.retain(|f| f.region != region);
        observation.failures.push(ObserveFailure::new(region, None, error(ErrorClass::Transient, why)));
        observation
    }

    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError> {
        let (fault, cut) = {
            let mut state = self.state();
            if !state.strikes() {
                (None, 0)
            } else {
                let fault = APPLY_FAULTS[state.below(APPLY_FAULTS.len() as u64) as usize];
                let total = change.revoke.len() + change.update_descriptions.len() + change.authorize.len();
                (Some(state.count(fault)), state.below(total as u64 + 1) as usize)
            }
        };
        match fault {
            None => self.inner.apply(change).await,
            Some(Fault::Throttled) => Err(error(ErrorClass::Transient, "Request limit exceeded.")),
            Some(Fault::ServerError) => Err(error(ErrorClass::Transient, "The service is unavailable.")),
            Some(Fault::TimeoutBefore) => Err(error(ErrorClass::Transient, "the request timed out")),
            Some(Fault::TimeoutAfter) => {
                self.inner.apply(change).await?;
                Err(error(ErrorClass::Transient, "the request timed out"))
            }
            Some(Fault::Partial) => {
                // The first `cut` entries, in the order they are sent: revokes, updates, authorizes.
                let mut part = change.clone();
                let mut left = cut;
                for list in [&mut part.revoke, &mut part.update_descriptions, &mut part.authorize] {
                    let keep = left.min(list.len());
                    list.truncate(keep);
                    left -= keep;
                }
                self.inner.apply(&part).await?;
                Err(error(ErrorClass::Transient, "An internal error has occurred."))
            }
            Some(Fault::GroupNotFound) => Err(error(ErrorClass::GroupGone, "The security group does not exist.")),
            Some(Fault::Quota) => Err(error(ErrorClass::Conflict, "The maximum number of rules has been reached.")),
            Some(Fault::ObserveFailed) => unreachable!("not an apply fault"),
        }
    }
}
