//! Test doubles (the `test-support` feature; never in a release build): [`MemoryFirewall`],
//! EC2 in memory, [`HeldFirewall`], a wrapper that pauses an observe, and
//! [`MemoryMembership`], Auto Scaling in memory. A test that
//! misuses them (a rule for a group it never made) panics with a message saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use portcullis_core::{GroupChange, ObservedGroup, ObservedRule, Route, TargetId, TargetSpec, Timestamp, counts_after};
use tokio::sync::oneshot;

use crate::{Applied, Clock, ErrorClass, Firewall, FirewallError, Observation, ObserveFailure};

/// The action recorded for a `ModifyManagedPrefixList` refused for naming an old version.
pub const REFUSED_VERSION: &str = "ModifyManagedPrefixList refused: PrefixListVersionMismatch";

/// One call the in-memory firewall served, with the (injected) time it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub at: Timestamp,
    pub action: &'static str,
    pub group: TargetId,
    pub rules: Vec<ObservedRule>,
}

/// A rule a call really added or removed (not one it found already there or already gone),
/// with the (injected) time: enough to rebuild when each rule was present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub at: Timestamp,
    pub group: TargetId,
    pub raw_cidr: String,
    pub ports: portcullis_core::PortRange,
    pub added: bool,
}

/// Security groups in memory: for engine tests and benchmarks that must not depend on AWS.
/// It behaves like EC2 on the points that matter (one describe per region, duplicate and
/// missing rules, per-region failures) and records every call with its time.
pub struct MemoryFirewall {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) groups: Mutex<BTreeMap<TargetId, ObservedGroup>>,
    calls: Mutex<Vec<RecordedCall>>,
    effects: Mutex<Vec<Effect>>,
    failing_regions: Mutex<BTreeSet<String>>,
    /// Guard's view (`memory_guard`): each CIDR rule's id, the rules of other kinds, what
    /// STS answers, and the trail of calls that changed rules.
    pub(crate) ids: Mutex<BTreeMap<(TargetId, String, portcullis_core::PortRange), String>>,
    pub(crate) others: Mutex<BTreeMap<TargetId, Vec<portcullis_core::guard::GroupRule>>>,
    pub(crate) identity: Mutex<Option<String>>,
    pub(crate) trail: Mutex<Vec<crate::memory_guard::TrailRecord>>,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
}

impl MemoryFirewall {
    pub fn new(clock: Arc<dyn Clock>) -> MemoryFirewall {
        MemoryFirewall {
            clock,
            groups: Mutex::default(),
            calls: Mutex::default(),
            effects: Mutex::default(),
            failing_regions: Mutex::default(),
            ids: Mutex::default(),
            others: Mutex::default(),
            identity: Mutex::new(Some("arn:aws:sts::123456789012:assumed-role/portcullis/memory".into())),
            trail: Mutex::default(),
            next_id: Default::default(),
        }
    }

    /// Creates (or replaces) a group with tags and no rules.
    pub fn put_group(&self, region: &str, group_id: &str, tags: &[(&str, &str)]) {
        let id = TargetId { region: region.into(), group_id: group_id.into() };
        let group = ObservedGroup {
            list: None,
            id: id.clone(),
            name: group_id.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            rules: vec![],
            counts: Default::default(),
            route: Route::region(region),
            owner: None,
        };
        self.groups.lock().unwrap_or_else(PoisonError::into_inner).insert(id, group);
    }

    /// Creates (or replaces) a managed prefix list, empty, at version 1.
    pub fn put_prefix_list(&self, region: &str, list_id: &str, max_entries: usize, family: portcullis_core::Family) {
        self.put_group(region, list_id, &[]);
        let id = TargetId { region: region.into(), group_id: list_id.into() };
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let list = groups.get_mut(&id).expect("just put");
        list.list = Some(portcullis_core::ListInfo { version: 1, max_entries, family });
    }

    /// Adds a rule as a person would by hand (on a prefix list: an entry, a new version).
    pub fn put_rule(&self, region: &str, group_id: &str, rule: ObservedRule) {
        let id = TargetId { region: region.into(), group_id: group_id.into() };
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let group = groups.get_mut(&id).expect("put_group first: the rule's group does not exist");
        group.counts.add(rule.cidr.family(), 1);
        group.rules.push(rule);
        if let Some(list) = &mut group.list {
            list.version += 1;
        }
    }

    /// Deletes a rule as a person would by hand.
    pub fn delete_rule(&self, region: &str, group_id: &str, raw_cidr: &str, ports: portcullis_core::PortRange) {
        let id = TargetId { region: region.into(), group_id: group_id.into() };
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let group = groups.get_mut(&id).expect("put_group first: the rule's group does not exist");
        if let Some(i) = group.rules.iter().position(|r| r.raw_cidr == raw_cidr && r.ports == ports) {
            let rule = group.rules.remove(i);
            group.counts.add(rule.cidr.family(), -1);
        }
    }

    /// The rules a group holds now.
    pub fn rules(&self, region: &str, group_id: &str) -> Vec<ObservedRule> {
        let id = TargetId { region: region.into(), group_id: group_id.into() };
        self.groups.lock().unwrap_or_else(PoisonError::into_inner).get(&id).map(|g| g.rules.clone()).unwrap_or_default()
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every rule a call added or removed so far, in order.
    pub fn effects(&self) -> Vec<Effect> {
        self.effects.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes every call to a region fail (or succeed again).
    pub fn set_region_failing(&self, region: &str, failing: bool) {
        let mut set = self.failing_regions.lock().unwrap_or_else(PoisonError::into_inner);
        if failing {
            set.insert(region.into());
        } else {
            set.remove(region);
        }
    }

    fn record(&self, action: &'static str, group: &TargetId, rules: Vec<ObservedRule>) {
        let at = self.clock.now();
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(RecordedCall { at, action, group: group.clone(), rules });
    }

    pub(crate) fn failing(&self, region: &str) -> bool {
        self.failing_regions.lock().unwrap_or_else(PoisonError::into_inner).contains(region)
    }
}

fn as_rule(r: &portcullis_core::AppliedRule, description: bool) -> ObservedRule {
    ObservedRule {
        cidr: r.cidr,
        raw_cidr: r.ec2_cidr.clone(),
        ports: r.ports,
        description: description.then(|| r.description.clone()),
    }
}

#[async_trait]
impl Firewall for MemoryFirewall {
    async fn observe(&self, specs: &[TargetSpec]) -> Observation {
        let mut out = Observation::default();
        let regions: BTreeSet<&str> = specs.iter().map(|s| s.region.as_str()).collect();
        for region in regions {
            let id = TargetId { region: region.into(), group_id: "*".into() };
            self.record("DescribeSecurityGroups", &id, vec![]);
            if self.failing(region) {
                out.failures.push(ObserveFailure::new(region, None, unreachable()));
                continue;
            }
            // Everything the region holds, as described through each route there (one account
            // here); which of it the specs select is `core::select`'s decision.
            let routes: BTreeSet<Route> = specs.iter().filter(|s| s.region == region).map(TargetSpec::route).collect();
            let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            for route in routes {
                for group in groups.values().filter(|g| g.id.region == region) {
                    out.groups.push(ObservedGroup { route: route.clone(), ..group.clone() });
                }
            }
        }
        out
    }

    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError> {
        if self.failing(&change.target.region) {
            return Err(unreachable());
        }
        let mut applied = Applied::default();
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let group = groups.get_mut(&change.target).ok_or_else(|| FirewallError::new(ErrorClass::GroupGone, "no such group"))?;
        // A prefix list as EC2 keeps one: each call names the version it was planned over, and
        // may not take the list past MaxEntries; each call of at most 100 additions and 100
        // removals makes a new version.
        let list_calls = match (&mut group.list, &change.list) {
            (Some(list), Some(planned)) => {
                if list.version != planned.version {
                    let message = format!("the prefix list is at version {}, not {}", list.version, planned.version);
                    drop(groups);
                    self.record(REFUSED_VERSION, &change.target, vec![]);
                    return Err(FirewallError::new(ErrorClass::Conflict, message));
                }
                let after = group.rules.len() + change.authorize.len() - change.revoke.len().min(group.rules.len());
                if after > list.max_entries {
                    let message = format!("{after} entries would exceed MaxEntries {}", list.max_entries);
                    return Err(FirewallError::new(ErrorClass::Permanent, message));
                }
                let adds = change.authorize.len() + change.update_descriptions.len();
                let removes = change.revoke.len() + change.update_descriptions.len();
                let calls = adds.max(removes).div_ceil(100).max(1);
                list.version += calls as i64;
                Some(calls)
            }
            _ => None,
        };
        let same = |o: &ObservedRule, r: &portcullis_core::AppliedRule| o.raw_cidr == r.ec2_cidr && o.ports == r.ports;
        let at = self.clock.now();
        let mut effects = Vec::new();
        let (mut gone, mut made) = (Vec::new(), Vec::new());
        let effect = |r: &portcullis_core::AppliedRule, added| Effect {
            at,
            group: change.target.clone(),
            raw_cidr: r.ec2_cidr.clone(),
            ports: r.ports,
            added,
        };
        for r in &change.revoke {
            match group.rules.iter().position(|o| same(o, r)) {
                Some(i) => {
                    gone.push(group.rules.remove(i));
                    applied.revoked += 1;
                    effects.push(effect(r, false));
                }
                None => applied.already_done += 1,
            }
        }
        for r in &change.update_descriptions {
            if let Some(o) = group.rules.iter_mut().find(|o| same(o, r)) {
                o.description = Some(r.description.clone());
                applied.updated += 1;
            }
        }
        for r in &change.authorize {
            if group.rules.iter().any(|o| same(o, r)) {
                applied.already_done += 1;
            } else {
                group.rules.push(as_rule(r, true));
                made.push(as_rule(r, true));
                applied.authorized += 1;
                effects.push(effect(r, true));
            }
        }
        group.counts = counts_after(group.counts, change);
        drop(groups);
        if change.list.is_none() {
            for rule in &gone {
                self.forget_id(&change.target, rule);
            }
            self.record_trail("RevokeSecurityGroupIngress", &change.target, crate::memory_guard::removed(&gone));
            let added = crate::memory_guard::added(self, &change.target, &made);
            self.record_trail("AuthorizeSecurityGroupIngress", &change.target, added);
        }
        self.effects.lock().unwrap_or_else(PoisonError::into_inner).extend(effects);
        if let Some(calls) = list_calls {
            let entries: Vec<ObservedRule> = change
                .authorize
                .iter()
                .chain(&change.revoke)
                .chain(&change.update_descriptions)
                .map(|r| as_rule(r, true))
                .collect();
            for _ in 0..calls {
                self.record("ModifyManagedPrefixList", &change.target, entries.clone());
            }
            return Ok(applied);
        }
        for (action, rules) in [
            ("RevokeSecurityGroupIngress", &change.revoke),
            ("UpdateSecurityGroupRuleDescriptionsIngress", &change.update_descriptions),
            ("AuthorizeSecurityGroupIngress", &change.authorize),
        ] {
            if !rules.is_empty() {
                self.record(action, &change.target, rules.iter().map(|r| as_rule(r, true)).collect());
            }
        }
        Ok(applied)
    }
}

/// Wraps a firewall so that a test can stop one observe: before it looks at the firewall
/// ([`HeldFirewall::hold_before_next_observe`]) or after ([`HeldFirewall::hold_next_observe`]).
pub struct HeldFirewall {
    inner: Arc<dyn Firewall>,
    hold: Mutex<Option<Hold>>,
}

struct Hold {
    before: bool,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

impl HeldFirewall {
    pub fn new(inner: Arc<dyn Firewall>) -> HeldFirewall {
        HeldFirewall { inner, hold: Mutex::new(None) }
    }

    /// Arms the hold; returns (observed, release): `observed` fires once the next observe has
    /// seen the firewall, and that observe returns once `release` is sent.
    pub fn hold_next_observe(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        self.arm(false)
    }

    /// Arms the hold; returns (reached, release): `reached` fires when the next observe
    /// begins, and it looks at the firewall only once `release` is sent. What the test changes
    /// meanwhile is in that observation.
    pub fn hold_before_next_observe(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        self.arm(true)
    }

    fn arm(&self, before: bool) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached, reached_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = Some(Hold { before, reached, release });
        (reached_rx, release_tx)
    }
}

#[async_trait]
impl Firewall for HeldFirewall {
    async fn observe(&self, specs: &[TargetSpec]) -> Observation {
        let hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner).take();
        let (before, after) = match hold {
            Some(hold) if hold.before => (Some(hold), None),
            hold => (None, hold),
        };
        if let Some(Hold { reached, release, .. }) = before {
            let _ = reached.send(());
            let _ = release.await;
        }
        let observation = self.inner.observe(specs).await;
        if let Some(Hold { reached, release, .. }) = after {
            let _ = reached.send(());
            let _ = release.await;
        }
        observation
    }

    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError> {
        self.inner.apply(change).await
    }
}

/// Auto Scaling groups in memory: set their instances, fail a region, and read back every
/// lifecycle action completed.
#[derive(Default)]
pub struct MemoryMembership {
    groups: Mutex<BTreeMap<(String, String), Vec<portcullis_core::Instance>>>,
    failing_regions: Mutex<BTreeSet<String>>,
    completed: Mutex<Vec<(String, crate::LifecycleAction, crate::LifecycleResult)>>,
    calls: Mutex<Vec<String>>,
}

impl MemoryMembership {
    /// Sets the ASG's instances (creating it).
    pub fn set_instances(&self, region: &str, asg: &str, instances: Vec<portcullis_core::Instance>) {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner).insert((region.into(), asg.into()), instances);
    }

    pub fn set_region_failing(&self, region: &str, failing: bool) {
        let mut regions = self.failing_regions.lock().unwrap_or_else(PoisonError::into_inner);
        if failing {
            regions.insert(region.into());
        } else {
            regions.remove(region);
        }
    }

    /// Every lifecycle action completed: (region, action, result).
    pub fn completed(&self) -> Vec<(String, crate::LifecycleAction, crate::LifecycleResult)> {
        self.completed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every call, as `Action region`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn call(&self, action: &str, region: &str) -> Result<(), crate::MembershipError> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(format!("{action} {region}"));
        if self.failing_regions.lock().unwrap_or_else(PoisonError::into_inner).contains(region) {
            return Err(crate::MembershipError { code: None, message: format!("{region} is failing") });
        }
        Ok(())
    }
}

#[async_trait]
impl crate::Membership for MemoryMembership {
    async fn instances(
        &self,
        route: &portcullis_core::Route,
        asg: &str,
    ) -> Result<Option<Vec<portcullis_core::Instance>>, crate::MembershipError> {
        self.call("DescribeAutoScalingGroups", &route.region)?;
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(groups.get(&(route.region.clone(), asg.to_string())).cloned())
    }

    async fn describe(
        &self,
        route: &portcullis_core::Route,
        ids: &[String],
    ) -> Result<Vec<portcullis_core::Instance>, crate::MembershipError> {
        self.call("DescribeInstances", &route.region)?;
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        // As EC2 describes them: no lifecycle state, the group's name in their tag.
        let found = groups
            .iter()
            .filter(|((region, _), _)| *region == route.region)
            .flat_map(|((_, asg), instances)| instances.iter().map(move |i| (asg, i)))
            .filter(|(_, i)| ids.contains(&i.id))
            .map(|(asg, i)| portcullis_core::Instance { lifecycle_state: String::new(), asg: Some(asg.clone()), ..i.clone() });
        Ok(found.collect())
    }

    async fn complete(
        &self,
        route: &portcullis_core::Route,
        action: &crate::LifecycleAction,
        result: crate::LifecycleResult,
    ) -> Result<(), crate::MembershipError> {
        self.call("CompleteLifecycleAction", &route.region)?;
        self.completed.lock().unwrap_or_else(PoisonError::into_inner).push((route.region.clone(), action.clone(), result));
        Ok(())
    }
}

/// A region the test made unreachable: no answer, as a timeout.
fn unreachable() -> FirewallError {
    FirewallError::new(ErrorClass::Transient, "region unreachable")
}
