use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use async_trait::async_trait;
use portcullis_core::{AppliedRule, FamilyCounts, GroupChange, ObservedGroup, TargetId, TargetSelector, TargetSpec};

use crate::{Applied, Firewall, FirewallError, Observation};

/// Prints the exact operations it would make, under a banner saying nothing is changed.
///
/// It observes through `inner` when given one (e.g. the real EC2 firewall for
/// `refresh --dry-run`); otherwise it sees the configured explicit group ids as empty groups.
pub struct DryRunFirewall {
    inner: Option<Arc<dyn Firewall>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl DryRunFirewall {
    pub fn new(inner: Option<Arc<dyn Firewall>>, out: Box<dyn Write + Send>) -> DryRunFirewall {
        DryRunFirewall { inner, out: Mutex::new(out) }
    }
}

fn static_groups(specs: &[TargetSpec]) -> Observation {
    static DISCOVERY_WARNING: Once = Once::new();
    static LIST_WARNING: Once = Once::new();
    let mut groups = Vec::new();
    for spec in specs {
        match &spec.selector {
            TargetSelector::Ids(ids) => groups.extend(ids.iter().map(|id| ObservedGroup {
                list: None,
                id: TargetId { region: spec.region.clone(), group_id: id.to_string() },
                name: id.to_string(),
                tags: Default::default(),
                rules: vec![],
                counts: FamilyCounts::default(),
                route: spec.route(),
                owner: None,
            })),
            TargetSelector::PrefixLists(_) | TargetSelector::TaggedPrefixLists { .. } => LIST_WARNING.call_once(|| {
                tracing::warn!(region = %spec.region,
                    "the dry-run firewall cannot read prefix lists; use --firewall aws with refresh --dry-run");
            }),
            TargetSelector::Discovery { .. } => DISCOVERY_WARNING.call_once(|| {
                tracing::warn!(region = %spec.region,
                    "the dry-run firewall cannot discover tagged groups; use --firewall aws with refresh --dry-run");
            }),
        }
    }
    Observation { groups, failures: vec![] }
}

fn line(call: &str, rule: &AppliedRule) -> String {
    format!("  {call} {} {} {:?}\n", rule.ports, rule.ec2_cidr, rule.description)
}

#[async_trait]
impl Firewall for DryRunFirewall {
    async fn observe(&self, specs: &[TargetSpec]) -> Observation {
        match &self.inner {
            Some(inner) => inner.observe(specs).await,
            None => static_groups(specs),
        }
    }

    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError> {
        let mut text = format!("DRY RUN - nothing is changed. Would change security group {}:\n", change.target);
        for r in &change.authorize {
            text.push_str(&line("AuthorizeSecurityGroupIngress", r));
        }
        for r in &change.revoke {
            text.push_str(&line("RevokeSecurityGroupIngress", r));
        }
        for r in &change.update_descriptions {
            text.push_str(&line("UpdateSecurityGroupRuleDescriptionsIngress", r));
        }
        let mut out = self.out.lock().expect("dry-run output mutex poisoned");
        match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            // The reader went away (`| head`): the output ends, the dry run does not fail.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(FirewallError::new(crate::ErrorClass::Permanent, format!("dry-run output: {e}"))),
            Ok(()) => {}
        }
        // Nothing was changed, so nothing is reported as applied.
        Ok(Applied::default())
    }
}
