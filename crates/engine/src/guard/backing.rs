//! What guard takes for portcullis's own: rules the store backs, and calls made as an identity
//! portcullis has (configured in `own_principals`, or learned from STS at start).

use std::collections::{BTreeMap, BTreeSet};

use portcullis_core::guard::{Backing, ChangeRequest, Claim, GuardRule, grant_backs, timed_rule_backs};
use portcullis_core::{Environment, Grant, PortSet, PrincipalPattern, Route, TargetId, admit_grants};
use serde::Serialize;

use super::Guard;
use crate::{EngineError, Grants, Scope};

/// An identity guard learned for a route: the ARN STS named, and the pattern it matches
/// events with (an assumed role's session varies from process to process, so any session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnIdentity {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    pub arn: String,
    pub pattern: String,
}

/// The pattern an identity's events are matched with: an assumed role with any session name.
fn own_pattern(arn: &str) -> String {
    match arn.split_once(":assumed-role/") {
        Some((head, rest)) => match rest.split_once('/') {
            Some((role, _session)) => format!("{head}:assumed-role/{role}/*"),
            None => arn.to_string(),
        },
        None => arn.to_string(),
    }
}

impl Guard {
    /// Which of `rules` the store backs on `group`: a marked rule claiming an environment is
    /// backed by a live grant of that environment for its address, when the group is one of the
    /// environment's targets and the rule is on one of its ports; one claiming a timed rule, by
    /// that request's live timed rule on this group. Everything else is not ours, whatever its
    /// description says.
    pub(crate) async fn backing(&self, group: &TargetId, rules: &[GuardRule]) -> Result<Backing, EngineError> {
        let marker = self.shared.marker();
        let now = self.shared.clock.now();
        let mut backing = Backing::default();
        let mut grants: BTreeMap<Environment, Vec<Grant>> = BTreeMap::new();
        let mut ports: BTreeMap<Environment, Option<PortSet>> = BTreeMap::new();
        let mut requests: BTreeMap<String, Option<ChangeRequest>> = BTreeMap::new();
        for rule in rules {
            let backed = match rule.claim(marker) {
                None => false,
                Some(Claim::Environment(env)) => {
                    if self.shared.policies().get(&env).is_none() {
                        continue;
                    }
                    if !ports.contains_key(&env) {
                        let found = self.ports_of(group, &env).await;
                        ports.insert(env.clone(), found);
                    }
                    let Some(Some(on)) = ports.get(&env) else { continue };
                    if !grants.contains_key(&env) {
                        let stored = self.shared.store.grants(Some(&env)).await?;
                        let (admitted, _) = admit_grants(stored, self.shared.policies(), now);
                        grants.insert(env.clone(), admitted);
                    }
                    grants[&env].iter().any(|g| grant_backs(rule, g, on, now))
                }
                Some(Claim::TimedRule(id)) => {
                    if !requests.contains_key(&id) {
                        let request = self.requests.request(&id).await?;
                        requests.insert(id.clone(), request);
                    }
                    requests[&id].as_ref().is_some_and(|r| timed_rule_backs(rule, r, group, marker, now))
                }
            };
            if backed {
                backing.insert(rule);
            }
        }
        Ok(backing)
    }

    /// The ports `group` has as one of `env`'s targets, if it is one: from the last
    /// observation, else from a new one of that environment.
    async fn ports_of(&self, group: &TargetId, env: &Environment) -> Option<PortSet> {
        let known = |grants: &Grants| grants.known_targets(env).into_iter().find(|(id, _)| id == group).map(|(_, p)| p);
        if let Some(ports) = known(&self.grants) {
            return Some(ports);
        }
        self.grants.observe(&Scope::Environment(env.clone())).await;
        known(&self.grants)
    }

    /// The identities guard knows as its own: learned from STS for each route it acts on.
    /// Routes that have not answered yet are asked again (each time, until they answer).
    pub async fn own_identities(&self) -> Vec<OwnIdentity> {
        self.learn().await
    }

    async fn learn(&self) -> Vec<OwnIdentity> {
        let mut learned = self.learned.lock().await;
        let routes: BTreeSet<&Route> = self.settings.scopes.iter().map(|s| &s.route).collect();
        for route in routes {
            if learned.iter().any(|l| l.region == route.region && l.role_arn == route.role_arn) {
                continue;
            }
            match self.firewall.identity(route).await {
                Ok(arn) => {
                    let own = OwnIdentity {
                        region: route.region.clone(),
                        role_arn: route.role_arn.clone(),
                        pattern: own_pattern(&arn),
                        arn,
                    };
                    tracing::info!(region = %own.region, role = own.role_arn.as_deref().unwrap_or("-"), arn = %own.arn,
                        pattern = %own.pattern, "guard: own identity learned from sts:GetCallerIdentity; its events are never reverted");
                    learned.push(own);
                }
                Err(e) => tracing::warn!(region = %route.region, error = %e,
                    "guard: could not learn its own identity from STS; its own calls are still known from its ledger"),
            }
        }
        learned.clone()
    }

    /// Which own identity `principal` is, if it is one: configured, or learned.
    pub(crate) async fn own_principal(&self, principal: &str) -> Option<String> {
        if let Some(p) = self.settings.own_principals.iter().find(|p| p.matches(principal)) {
            return Some(format!("own_principals: {p}"));
        }
        let learned = self.learn().await;
        learned
            .into_iter()
            .find(|l| PrincipalPattern::parse(&l.pattern).is_ok_and(|p| p.matches(principal)))
            .map(|l| format!("learned from sts:GetCallerIdentity in {}: {}", l.region, l.arn))
    }
}

#[cfg(test)]
mod tests {
    use super::own_pattern;

    #[test]
    fn an_assumed_role_is_known_whatever_its_session() {
        assert_eq!(
            own_pattern("arn:aws:sts::123456789012:assumed-role/portcullis/portcullis-dev"),
            "arn:aws:sts::123456789012:assumed-role/portcullis/*"
        );
        assert_eq!(own_pattern("arn:aws:iam::123456789012:user/moto"), "arn:aws:iam::123456789012:user/moto");
    }
}
