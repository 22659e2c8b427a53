//! The `lambda_event` harness: any payload the Lambda function (or `portcullis invoke`) may be
//! handed (action events, DynamoDB Stream batches, EventBridge schedules and API Gateway HTTP
//! requests), dispatched by the real handler to an engine on SQLite with the dry-run firewall.
//! HTTP requests for `/slack/commands` are signed with the fuzzing secret, so the fuzzer
//! reaches the command handling behind the signature check. Every answer is a JSON object,
//! and a refused action says so.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use portcullis_engine::{Clock, DryRunFirewall, Firewall, LogNotifier, SystemClock};
use portcullis_slack::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use portcullis_slack::{SigningSecret, SigningSecrets};
use serde_json::Value;

use crate::app::App;
use crate::config::{Config, Overrides};
use crate::lambda::{Handler, classify};
use crate::slack::SlackEndpoint;
use crate::wiring;

const SECRET: &str = "fuzzing-signing-secret";

struct World {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

/// A directory of this process's own for the fuzzing store, removed when the process ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    static DIR: OnceLock<Dir> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = DIR.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            Dir(dir)
        });
        let toml = format!(
            r#"
            store = "sqlite:{}/fuzz.db"
            default_environment = "dev"
            [environments.dev]
            [[environments.dev.targets]]
            region = "us-east-1"
            group_ids = ["sg-0123456789abcdef0", "sg-0fedcba9876543210"]
            [environments.prod]
            [[environments.prod.targets]]
            region = "eu-west-1"
            group_ids = ["sg-00000000000000001"]
            ports = "nlb"
            "#,
            dir.0.display()
        );
        let config = Config::from_toml(&toml, "fuzz.toml", &Overrides::default(), &|_| None).expect("the fuzzing configuration");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let handler = runtime.block_on(async {
            let store = wiring::open_store(&config).await.expect("the store");
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let firewall: Arc<dyn Firewall> = Arc::new(DryRunFirewall::new(None, Box::new(std::io::sink())));
            let lease = wiring::sweeper_lease(store.clone(), clock.clone());
            let builder = wiring::builder(&config, store, firewall, clock, Arc::new(LogNotifier));
            let engine = Arc::new(builder.lease(lease).build());
            let secrets = SigningSecrets { current: SigningSecret::new(SECRET), next: None };
            let slack = SlackEndpoint::new(&config.slack, secrets, None).inline();
            let app = Arc::new(App::new(engine.clone(), &config, Some(Arc::new(slack))));
            Handler::new(engine, app)
        });
        World { runtime, handler }
    })
}

/// Signs an HTTP API request's body for now, as Slack would.
fn sign_http(value: &mut Value) {
    if value.pointer("/requestContext/http").is_none() || value.get("isBase64Encoded") == Some(&Value::Bool(true)) {
        return;
    }
    let body = value.get("body").and_then(Value::as_str).unwrap_or_default().to_string();
    let Some(Value::Object(headers)) = value.get_mut("headers") else { return };
    let now = SystemClock.now().unix_timestamp().to_string();
    let signature = SigningSecret::new(SECRET).sign(&now, body.as_bytes());
    headers.insert(TIMESTAMP_HEADER.into(), Value::String(now));
    headers.insert(SIGNATURE_HEADER.into(), Value::String(signature));
}

/// The harness (see the module's text).
pub fn lambda_event(data: &[u8]) {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else { return };
    sign_http(&mut value);
    let is_action = classify(value.clone()).is_ok() && value.get("action").is_some();
    let world = world();
    let Ok(answer) = world.runtime.block_on(world.handler.handle(value)) else { return };
    assert!(answer.is_object(), "an answer is a JSON object: {answer}");
    if is_action {
        assert!(answer.get("success").is_some_and(Value::is_boolean), "an action's answer says whether it succeeded: {answer}");
    }
}
