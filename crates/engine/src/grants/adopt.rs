//! `adopt`: taking over the rules the IP Whitelist Manager's Lambda made without our marker, when they match a
//! live grant exactly (`core::plan_adoption` decides which).

use portcullis_core::{Action, AuditEvent, AuditScope, PlanInput, plan_adoption, plan_seed_grants};
use portcullis_store::Upsert;

use crate::report::AdoptReport;
use crate::{EngineError, Grants, Requester, Scope};

impl Grants {
    /// Takes over the marker-less rules (the IP Whitelist Manager's) that match a live grant exactly, by
    /// rewriting their descriptions to carry our marker; with `dry_run`, only says which.
    /// Nothing else ever edits an unowned rule.
    pub async fn adopt(&self, dry_run: bool, by: &Requester) -> Result<AdoptReport, EngineError> {
        let observed = self.observe(&Scope::All).await;
        let grants = self.planned_grants(&Scope::All).await?;
        let history = self.store().environments_with_history().await?;
        let input = PlanInput {
            grants: &grants,
            targets: &observed.targets,
            marker: self.marker(),
            environments_with_history: &history,
            quota: self.quota(),
            now: self.clock().now(),
        };
        let mut changes = plan_adoption(&input);
        let (seed_grants, seed_changes, seed_refused) = plan_seed_grants(&input, self.policies());
        changes.extend(seed_changes);
        if dry_run || changes.is_empty() {
            let observe_failures = observed.failures;
            return Ok(AdoptReport { changes, seed_grants, seed_refused, dry_run, outcomes: vec![], observe_failures });
        }
        // The grants first, so that a crash before the descriptions change leaves grants whose
        // rules the next adopt (or reconcile) marks, never marked rules no grant backs.
        let actor = by.actor();
        for grant in &seed_grants {
            let upsert = Upsert { grant: grant.clone(), actor: actor.clone(), max_grants_per_user: usize::MAX };
            self.store().upsert(upsert).await?;
        }
        if !seed_grants.is_empty() {
            self.shared.wake_sweeper.notify_one();
            self.announce();
        }
        let outcomes = self.apply_all(&changes).await;
        for (change, outcome) in changes.iter().zip(&outcomes) {
            if outcome.error.is_some() {
                continue;
            }
            for rule in &change.update_descriptions {
                let event = AuditEvent {
                    id: 0,
                    at: self.clock().now(),
                    actor: by.actor().name.into(),
                    interface: by.interface,
                    action: Action::Adopted,
                    environment: AuditScope::from(&change.environment),
                    cidr: Some(rule.cidr),
                    before: None,
                    after: None,
                    reason: format!(
                        "took over {} {} on {}: description now {:?}",
                        rule.ec2_cidr, rule.ports, change.target, rule.description
                    ),
                    request: None,
                };
                if let Err(err) = self.store().record(event).await {
                    tracing::warn!(error = %err, "could not audit an adoption");
                }
            }
        }
        Ok(AdoptReport { changes, seed_grants, seed_refused, dry_run, outcomes, observe_failures: observed.failures })
    }
}
