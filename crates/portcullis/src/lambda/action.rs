//! The IP Whitelist Manager's action events (`add`, `remove`, `list`, `refresh`;
//! `../shared/fixtures/event-*.json`): read, carried out through the engine, and answered in
//! the old Lambda's shape, each answer a type of its own.

use portcullis_core::{
    Cidr, Credential, Description, Environment, Grant, GrantKey, Interface, InvalidInput, Owner, PermissionRefusal, Rejection,
    Source, Ttl, UserName,
};
use portcullis_engine::{AddRequest, Cause, Engine, EngineError, Failure, Requester, Scope};
use portcullis_store::ip_whitelist::{self, Attr};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An IP Whitelist Manager action event (`add`, `remove`, `list`, `refresh`). Fields it does not
/// know are kept aside, logged at debug and otherwise ignored, as the IP Whitelist Manager's
/// Lambda ignored them: its Slack bot may send more than portcullis reads, and a team switching
/// must not see its invocations fail for that. (The HTTP API stays strict.)
#[derive(Debug, Deserialize)]
pub struct ActionEvent {
    pub action: String,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub user_info: Option<UserInfo>,
    #[serde(default)]
    pub ttl_minutes: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    /// Whatever else the event carried.
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// What an action event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Remove,
    List,
    Refresh,
}

impl Verb {
    fn parse(text: &str) -> Option<Verb> {
        match text {
            "add" => Some(Verb::Add),
            "remove" => Some(Verb::Remove),
            "list" => Some(Verb::List),
            "refresh" => Some(Verb::Refresh),
            _ => None,
        }
    }
}

/// The answer to an action event that was carried out (`success` is false when some group
/// could not be changed; the grant is stored and the change retried).
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ActionAnswer {
    Add {
        success: bool,
        message: String,
        refreshed: bool,
        item: Value,
        failures: Vec<String>,
    },
    Remove {
        success: bool,
        message: String,
        item: Value,
        failures: Vec<String>,
    },
    List {
        success: bool,
        environment: Environment,
        count: usize,
        items: Vec<Value>,
    },
    Refresh {
        success: bool,
        environment: Environment,
        authorized: usize,
        revoked: usize,
        updated: usize,
        unchanged: usize,
        unowned_left_alone: usize,
        failures: Vec<String>,
    },
}

/// Why an action event was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("unknown action {0:?}: use add, remove, list or refresh")]
    UnknownAction(String),
    #[error(transparent)]
    Rejected(Rejection),
    /// Worth retrying (the store failed), unlike a rejection.
    #[error(transparent)]
    Failed(EngineError),
}

impl<E: Into<Rejection>> From<E> for ActionError {
    fn from(err: E) -> Self {
        ActionError::Rejected(err.into())
    }
}

fn failed(err: EngineError) -> ActionError {
    match err {
        EngineError::Rejected(r) => ActionError::Rejected(r),
        other => ActionError::Failed(other),
    }
}

/// The answer to an action event that was not carried out: `{"success": false, "action",
/// "error": {"code", "message"}}`.
#[derive(Debug, Serialize)]
pub struct ActionRefused {
    pub success: bool,
    pub action: String,
    pub error: AnswerError,
}

#[derive(Debug, Serialize)]
pub struct AnswerError {
    /// `invalid` (bad input, or something that does not exist), `refused` (policy or
    /// permission), or `failed`.
    pub code: &'static str,
    pub message: String,
}

impl ActionError {
    /// The exit code `portcullis invoke` ends with: 2 invalid, 3 refused, 1 failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ActionError::Failed(_) => 1,
            ActionError::Rejected(r) if r.is_refusal() => 3,
            ActionError::UnknownAction(_) | ActionError::Rejected(_) => 2,
        }
    }

    /// Whether the event was answered (bad input or a refusal: retrying changes nothing), or
    /// the invocation failed.
    pub fn answered(&self) -> bool {
        !matches!(self, ActionError::Failed(_))
    }

    pub fn answer(&self, action: &str) -> ActionRefused {
        let code = match self.exit_code() {
            1 => "failed",
            3 => "refused",
            _ => "invalid",
        };
        ActionRefused { success: false, action: action.to_string(), error: AnswerError { code, message: self.to_string() } }
    }
}

/// A grant as the IP Whitelist Manager's items show it, as plain JSON.
pub fn item_json(grant: &Grant) -> Value {
    let item = ip_whitelist::to_item(grant);
    let mut out = serde_json::Map::new();
    for (k, v) in item {
        if k.starts_with("pc_") {
            continue;
        }
        let v = match v {
            Attr::S(s) => Value::String(s),
            Attr::N(n) => n.parse::<i64>().map(Value::from).unwrap_or(Value::String(n)),
            Attr::Other => continue,
        };
        out.insert(k, v);
    }
    Value::Object(out)
}

impl ActionEvent {
    fn cidr(&self) -> Result<Cidr, ActionError> {
        let text = self
            .ip_address
            .as_deref()
            .ok_or_else(|| InvalidInput::InvalidAddress { input: String::new(), reason: "the event has no ip_address".into() })?;
        Ok(Cidr::parse(text)?)
    }

    /// Who the event says acts: `user_info`'s id (else its name).
    fn requester(&self, env: &Environment, interface: Interface) -> Result<Requester, ActionError> {
        let info = self.user_info.as_ref();
        let given = |field: Option<&String>| field.filter(|s| !s.trim().is_empty()).map(|s| UserName::parse(s)).transpose();
        let id = given(info.and_then(|u| u.user_id.as_ref()))?;
        let name = given(info.and_then(|u| u.username.as_ref()))?;
        let Some(id) = id.or_else(|| name.clone()) else {
            return Err(PermissionRefusal::NotAllowed { user: "(none)".into(), environment: env.to_string() }.into());
        };
        let owner = Owner {
            name: name.unwrap_or_else(|| id.clone()).into_string(),
            id: id.into_string(),
            display_name: info.and_then(|u| u.display_name.clone()).unwrap_or_default(),
        };
        Ok(Requester { owner, groups: vec![], interface, credential: Credential::Interface })
    }
}

/// Carries out an action event through the engine.
pub async fn handle_action(
    engine: &Engine,
    default_env: &Environment,
    event: ActionEvent,
    interface: Interface,
) -> Result<ActionAnswer, ActionError> {
    if !event.unknown.is_empty() {
        let fields: Vec<&str> = event.unknown.keys().map(String::as_str).collect();
        tracing::debug!(action = %event.action, ?fields, "action event fields portcullis does not read were ignored");
    }
    let env = match &event.environment {
        Some(name) => Environment::parse(name)?,
        None => default_env.clone(),
    };
    engine.grants().policy(&env)?;
    let verb = Verb::parse(&event.action).ok_or_else(|| ActionError::UnknownAction(event.action.clone()))?;
    match verb {
        Verb::Add => {
            let cidr = event.cidr()?;
            let ttl = event.ttl_minutes.map(Ttl::from_minutes).transpose()?;
            let description = Description::parse(event.description.as_deref().unwrap_or_default())?;
            let by = event.requester(&env, interface)?;
            let request = AddRequest { cidr, environment: env.clone(), ttl, description, source: Source::Manual, by };
            let o = engine.grants().add(request).await.map_err(failed)?;
            let failures = o.report.as_ref().map(|r| Failure::lines(&r.failures())).unwrap_or_default();
            let verb = if o.refreshed { "refreshed in" } else { "added to" };
            Ok(ActionAnswer::Add {
                success: failures.is_empty(),
                message: format!("IP {} {verb} {} whitelist", o.grant.cidr, o.grant.environment),
                refreshed: o.refreshed,
                item: item_json(&o.grant),
                failures,
            })
        }
        Verb::Remove => {
            let by = event.requester(&env, interface)?;
            let key = GrantKey { cidr: event.cidr()?, environment: env.clone() };
            let o = engine.grants().remove(&key, &by).await.map_err(failed)?;
            let failures = Failure::lines(&o.report.failures());
            Ok(ActionAnswer::Remove {
                success: failures.is_empty(),
                message: format!("IP {} removed from {} whitelist", o.grant.cidr, o.grant.environment),
                item: item_json(&o.grant),
                failures,
            })
        }
        Verb::List => {
            let by = Requester::named("lambda", interface);
            let grants = engine.grants().live_grants(&Scope::Environment(env.clone()), &by).await.map_err(failed)?;
            let items: Vec<Value> = grants.iter().map(item_json).collect();
            Ok(ActionAnswer::List { success: true, environment: env, count: items.len(), items })
        }
        Verb::Refresh => {
            let report = engine.grants().reconcile(Scope::Environment(env.clone()), Cause::Refresh).await.map_err(failed)?;
            let failures = Failure::lines(&report.failures());
            Ok(ActionAnswer::Refresh {
                success: failures.is_empty(),
                environment: env,
                authorized: report.authorized,
                revoked: report.revoked,
                updated: report.updated,
                unchanged: report.unchanged,
                unowned_left_alone: report.unowned_left_alone,
                failures,
            })
        }
    }
}

/// The answer to applying an approved change request (a deferred apply).
#[derive(Debug, Serialize)]
pub struct ApplyAnswer {
    pub success: bool,
    /// Always `apply`.
    pub action: &'static str,
    pub request: portcullis_core::guard::ChangeRequest,
    pub failures: Vec<String>,
}

impl ApplyAnswer {
    pub fn new(request: portcullis_core::guard::ChangeRequest, failures: &[Failure]) -> ApplyAnswer {
        ApplyAnswer { success: failures.is_empty(), action: "apply", request, failures: Failure::lines(failures) }
    }
}
