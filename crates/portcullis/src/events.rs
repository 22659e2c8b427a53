//! The AWS events portcullis acts on, read the same way by `invoke`, the Lambda and
//! `POST /v1/events`: Auto Scaling (lifecycle-hook events from EventBridge, fixtures
//! `asg-*.json`, the true-up, and `autoscaling:TEST_NOTIFICATION`) and CloudTrail rule changes
//! for guard (`cloudtrail`); and the answer each gets.

use portcullis_core::{Grant, Interface, member_instance};
use portcullis_engine::{
    Engine, EngineError, Failure, GuardError, GuardEvent, GuardOutcome, LifecycleAction, MemberEvent, MemberOutcome,
};
use serde_json::{Value, json};

use crate::cloudtrail::{self, MalformedTrail, Trail};

const LAUNCH: &str = "EC2 Instance-launch Lifecycle Action";
const TERMINATE: &str = "EC2 Instance-terminate Lifecycle Action";
const TEST_NOTIFICATION: &str = "autoscaling:TEST_NOTIFICATION";

/// What an AWS event payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsEvent {
    Member(MemberEvent),
    /// `autoscaling:TEST_NOTIFICATION`: acknowledged, nothing done.
    Test,
    /// A CloudTrail inbound-rule change, for guard.
    Guard(Box<GuardEvent>),
    /// Another CloudTrail call: acknowledged, nothing done, and why.
    OtherCall(String),
}

/// Why an AWS event payload cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedEvent {
    #[error("invalid Auto Scaling event: {0}")]
    Asg(String),
    #[error(transparent)]
    Trail(#[from] MalformedTrail),
}

/// Whether a payload claims to be an Auto Scaling or CloudTrail event (`None`: neither), and
/// which.
pub fn read(value: &Value) -> Option<Result<AwsEvent, MalformedEvent>> {
    if let Some(trail) = cloudtrail::read(value) {
        return Some(match trail {
            Ok(Trail::Change(event)) => Ok(AwsEvent::Guard(event)),
            Ok(Trail::Other(reason)) => Ok(AwsEvent::OtherCall(reason)),
            Err(e) => Err(e.into()),
        });
    }
    let detail_type = value.get("detail-type").and_then(Value::as_str);
    let transition =
        value.pointer("/detail/LifecycleTransition").or_else(|| value.pointer("/detail/Event")).and_then(Value::as_str);
    if transition == Some(TEST_NOTIFICATION) || value.get("Event").and_then(Value::as_str) == Some(TEST_NOTIFICATION) {
        return Some(Ok(AwsEvent::Test));
    }
    if value.get("trueup").is_some() {
        return Some(true_up(value));
    }
    match detail_type {
        Some(LAUNCH) => Some(lifecycle(value).map(|(region, action)| AwsEvent::Member(MemberEvent::Launch { region, action }))),
        Some(TERMINATE) => {
            Some(lifecycle(value).map(|(region, action)| AwsEvent::Member(MemberEvent::Terminate { region, action })))
        }
        _ if value.get("source").and_then(Value::as_str) == Some("aws.autoscaling") => {
            Some(Err(MalformedEvent::Asg(format!("detail-type {detail_type:?} is not a lifecycle action portcullis handles"))))
        }
        _ => None,
    }
}

fn text<'a>(value: &'a Value, pointer: &str, name: &str) -> Result<&'a str, MalformedEvent> {
    match value.pointer(pointer) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(MalformedEvent::Asg(format!("{name} is missing"))),
        Some(_) => Err(MalformedEvent::Asg(format!("{name} is not a string"))),
    }
}

fn lifecycle(value: &Value) -> Result<(String, LifecycleAction), MalformedEvent> {
    let action = LifecycleAction {
        asg: text(value, "/detail/AutoScalingGroupName", "detail.AutoScalingGroupName")?.to_string(),
        hook: text(value, "/detail/LifecycleHookName", "detail.LifecycleHookName")?.to_string(),
        token: text(value, "/detail/LifecycleActionToken", "detail.LifecycleActionToken")?.to_string(),
        instance_id: text(value, "/detail/EC2InstanceId", "detail.EC2InstanceId")?.to_string(),
    };
    if !action.instance_id.starts_with("i-") {
        return Err(MalformedEvent::Asg(format!("detail.EC2InstanceId {:?} is not an instance id (i-…)", action.instance_id)));
    }
    Ok((text(value, "/region", "region")?.to_string(), action))
}

fn true_up(value: &Value) -> Result<AwsEvent, MalformedEvent> {
    if value.get("trueup") != Some(&Value::Bool(true)) {
        return Err(MalformedEvent::Asg("trueup must be true".into()));
    }
    let optional = |pointer: &str, name: &str| match value.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => text(value, pointer, name).map(|s| Some(s.to_string())),
    };
    Ok(AwsEvent::Member(MemberEvent::TrueUp {
        asg: optional("/detail/AutoScalingGroupName", "detail.AutoScalingGroupName")?,
        region: optional("/region", "region")?,
    }))
}

/// Why an event was not handled.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The engine could not (worth retrying).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The event itself is refused (retrying it changes nothing).
    #[error("{0}")]
    Refused(String),
}

/// Handles an Auto Scaling or CloudTrail event.
pub async fn handle(engine: &Engine, event: AwsEvent, interface: Interface) -> Result<Value, EventError> {
    let event = match event {
        AwsEvent::Test => return Ok(json!({"success": true, "action": "test-notification", "message": "acknowledged"})),
        AwsEvent::OtherCall(reason) => return Ok(json!({"success": true, "action": "guard", "ignored": reason})),
        AwsEvent::Guard(event) => {
            let outcome = match engine.guard() {
                Ok(guard) => guard.event(*event).await,
                Err(e) => Err(e),
            };
            return guard_answer(outcome);
        }
        AwsEvent::Member(event) => event,
    };
    let action = match &event {
        MemberEvent::Launch { .. } => "launch",
        MemberEvent::Terminate { .. } => "terminate",
        MemberEvent::TrueUp { .. } => "trueup",
    };
    let outcome = engine.member_event(event, interface).await?;
    Ok(answer(action, &outcome))
}

/// The answer to a guard event: `success` unless a revert failed (then the sweep retries).
fn guard_answer(outcome: Result<GuardOutcome, GuardError>) -> Result<Value, EventError> {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(GuardError::Engine(e)) => return Err(e.into()),
        Err(e @ GuardError::FromTheFuture { .. }) => return Err(EventError::Refused(e.to_string())),
        Err(e @ (GuardError::NotConfigured | GuardError::NoSuchRequest(_))) => {
            tracing::info!(error = %e, "guard event ignored");
            return Ok(json!({"success": false, "action": "guard", "ignored": e.to_string()}));
        }
    };
    let failures = match &outcome {
        GuardOutcome::Reverted { failures, .. } => Failure::lines(failures),
        _ => vec![],
    };
    let mut answer = serde_json::to_value(&outcome).expect("outcomes serialise");
    answer["success"] = json!(failures.is_empty());
    if answer.get("failures").is_some() {
        answer["failures"] = json!(failures);
    }
    answer["action"] = json!("guard");
    Ok(answer)
}

fn member_json(grant: &Grant) -> Value {
    json!({
        "cidr": grant.cidr,
        "environment": grant.environment,
        "owner": grant.owner.id,
        "instance": member_instance(grant),
        "expires_at": grant.expires_at.map(portcullis_store::ip_whitelist::iso),
    })
}

/// The JSON answer to a member event.
pub fn answer(action: &str, outcome: &MemberOutcome) -> Value {
    if let Some(reason) = &outcome.ignored {
        return json!({"success": false, "action": action, "ignored": reason});
    }
    json!({
        "success": outcome.failures.is_empty(),
        "action": action,
        "granted": outcome.granted.iter().map(member_json).collect::<Vec<_>>(),
        "removed": outcome.removed.iter().map(member_json).collect::<Vec<_>>(),
        "skipped": outcome.skipped,
        "held_by_others": outcome.held_by_others,
        "lifecycle": outcome.lifecycle,
        "failures": Failure::lines(&outcome.failures),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn the_fixtures_read_as_their_events() {
        let Some(Ok(AwsEvent::Member(MemberEvent::Launch { region, action }))) = read(&fixture("asg-launch.json")) else {
            panic!("a launch")
        };
        assert_eq!(region, "us-east-1");
        assert_eq!(
            action,
            LifecycleAction {
                asg: "web".into(),
                hook: "portcullis-launch".into(),
                token: "87654321-4321-4321-4321-210987654321".into(),
                instance_id: "i-0a1b2c3d4e5f67890".into(),
            }
        );
        assert!(matches!(read(&fixture("asg-terminate.json")), Some(Ok(AwsEvent::Member(MemberEvent::Terminate { .. })))));
        assert_eq!(
            read(&fixture("asg-trueup.json")),
            Some(Ok(AwsEvent::Member(MemberEvent::TrueUp { asg: Some("web".into()), region: None })))
        );
        assert_eq!(read(&json!({"trueup": true})), Some(Ok(AwsEvent::Member(MemberEvent::TrueUp { asg: None, region: None }))));
        assert_eq!(read(&fixture("event-add.json")), None, "not an Auto Scaling event");
    }

    #[test]
    fn test_notifications_are_acknowledged_and_malformed_events_say_what_is_wrong() {
        let test =
            json!({"source": "aws.autoscaling", "detail-type": LAUNCH, "detail": {"LifecycleTransition": TEST_NOTIFICATION}});
        assert_eq!(read(&test), Some(Ok(AwsEvent::Test)));
        assert_eq!(read(&json!({"Event": TEST_NOTIFICATION, "AutoScalingGroupName": "web"})), Some(Ok(AwsEvent::Test)));
        let mut launch = fixture("asg-launch.json");
        launch["detail"].as_object_mut().unwrap().remove("LifecycleActionToken");
        assert_eq!(read(&launch), Some(Err(MalformedEvent::Asg("detail.LifecycleActionToken is missing".into()))));
        launch["detail"]["LifecycleActionToken"] = json!(7);
        assert_eq!(read(&launch), Some(Err(MalformedEvent::Asg("detail.LifecycleActionToken is not a string".into()))));
        let mut other = fixture("asg-launch.json");
        other["detail-type"] = json!("EC2 Instance Launch Successful");
        assert!(matches!(read(&other), Some(Err(MalformedEvent::Asg(m))) if m.contains("EC2 Instance Launch Successful")));
        assert!(matches!(read(&json!({"trueup": "yes"})), Some(Err(_))));
        let mut bad_id = fixture("asg-terminate.json");
        bad_id["detail"]["EC2InstanceId"] = json!("web-1");
        assert!(matches!(read(&bad_id), Some(Err(MalformedEvent::Asg(m))) if m.contains("not an instance id")));
    }
}
