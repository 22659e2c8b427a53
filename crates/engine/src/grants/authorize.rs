//! Who may do what: the one authorisation every interface's requests go through. A request's
//! credentials (a token's environments, an IAM principal's listing) and the environment's
//! policy (its `users` and user groups) are checked here, and every refusal is audited.

use std::collections::BTreeSet;

use portcullis_core::{Action, AuditEvent, AuditScope, Cidr, Environment, Policy, Rejection};
use portcullis_store::Actor;

use crate::{EngineError, Grants, Requester};

impl Grants {
    /// Whether the requester may change grants in a known environment: its credentials must
    /// be valid there (a token's environments, an IAM principal's listing) and the policy must
    /// admit the user. The one authorisation every interface's changes go through; a refusal
    /// is audited.
    pub async fn authorize(&self, env: &Environment, by: &Requester) -> Result<&Policy, EngineError> {
        self.authorize_for(env, None, by).await
    }

    /// [`Grants::authorize`] for a change to one network, which the refusal names.
    pub(crate) async fn authorize_for(
        &self,
        env: &Environment,
        cidr: Option<&Cidr>,
        by: &Requester,
    ) -> Result<&Policy, EngineError> {
        let policy = self.policy(env)?;
        let refusal = by
            .credential
            .refusal(env, policy)
            .map(Err)
            .unwrap_or_else(|| policy.check_actor(env, &by.owner.id, &by.owner.name, &by.groups));
        if let Err(err) = refusal {
            return Err(self.refuse(err, env, cidr, &by.refused_actor()).await);
        }
        Ok(policy)
    }

    /// Whether the requester may read a known environment's grants and audit log: its
    /// credentials must be valid there. A refusal is audited.
    pub(crate) async fn authorize_read(&self, env: &Environment, by: &Requester) -> Result<(), EngineError> {
        let policy = self.policy(env)?;
        match by.credential.refusal(env, policy) {
            Some(err) => Err(self.refuse(err, env, None, &by.refused_actor()).await),
            None => Ok(()),
        }
    }

    /// Whether the requester may send what concerns every environment (an AWS event: a
    /// lifecycle action or a rule change may touch any): credentials limited to some
    /// environments may not. A refusal is audited.
    pub async fn authorize_everywhere(&self, by: &Requester) -> Result<(), EngineError> {
        let Err(err) = by.credential.everywhere() else { return Ok(()) };
        Err(self.refuse(err, AuditScope::All, None, &by.refused_actor()).await)
    }

    /// The known environments the requester's credentials are valid in.
    pub fn visible_environments(&self, by: &Requester) -> BTreeSet<Environment> {
        self.policies().iter().filter(|(env, policy)| by.credential.covers(env, policy)).map(|(env, _)| env.clone()).collect()
    }

    /// Records a refusal in a known environment (or for all of them), then returns it.
    pub(crate) async fn refuse(
        &self,
        err: impl Into<Rejection>,
        scope: impl Into<AuditScope>,
        cidr: Option<&Cidr>,
        actor: &Actor,
    ) -> EngineError {
        let err = err.into();
        let event = AuditEvent {
            id: 0,
            at: self.clock().now(),
            actor: actor.name.as_str().into(),
            interface: actor.interface,
            action: Action::Refused,
            environment: scope.into(),
            cidr: cidr.copied(),
            before: None,
            after: None,
            reason: err.to_string(),
            request: None,
        };
        if let Err(store_err) = self.store().record(event).await {
            tracing::warn!(error = %store_err, "could not audit a refusal");
        }
        EngineError::Rejected(err)
    }
}
