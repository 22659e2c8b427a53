//! The subcommands that run portcullis as a process or a client: `invoke`, `lambda`, `serve`
//! and `open`.

use std::process::ExitCode;
use std::sync::Arc;

use portcullis_core::Interface;

use super::print::print_json;
use super::{CliError, Context, announce};
use crate::lambda::{self, Event};
use crate::wiring;

#[derive(Debug, clap::Args)]
pub(super) struct InvokeArgs {
    /// The event's file, or - for standard input (the default).
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    event: String,
}

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (PORTCULLIS_LISTEN; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub(super) listen: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct OpenArgs {
    /// The server's base URL, e.g. https://portcullis.example.com.
    #[arg(long, value_name = "URL", env = "PORTCULLIS_SERVER")]
    server: String,
    /// Environment (default: the server's).
    #[arg(long, value_name = "E")]
    env: Option<String>,
    /// An API token (PORTCULLIS_TOKEN keeps it out of the process list).
    #[arg(
        long,
        value_name = "T",
        env = "PORTCULLIS_TOKEN",
        hide_env_values = true,
        conflicts_with = "aws",
        required_unless_present = "aws"
    )]
    token: Option<String>,
    /// Authenticate with this machine's AWS credentials (a signed sts:GetCallerIdentity).
    #[arg(long)]
    aws: bool,
    /// With --aws: the server id to bind the login to (default: the server URL's host[:port]).
    #[arg(long, value_name = "ID", requires = "aws")]
    server_id: Option<String>,
    /// With --aws: the STS endpoint to sign for (default: AWS_ENDPOINT_URL_STS,
    /// AWS_ENDPOINT_URL, else https://sts.amazonaws.com); the server's must match.
    #[arg(long, value_name = "URL", requires = "aws")]
    sts_endpoint: Option<String>,
    /// Open once and exit; no renewal, no close.
    #[arg(long)]
    once: bool,
    /// Renew every this many seconds (default: when half the time is left).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    renew_every: Option<u64>,
}

pub(super) async fn invoke(cx: &Context, a: InvokeArgs) -> Result<ExitCode, CliError> {
    let text = if a.event == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Usage(format!("cannot read the event from standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(&a.event).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", a.event)))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("the event is not JSON: {e}")))?;
    let event = lambda::classify(value).map_err(|e| CliError::Usage(e.to_string()))?;
    let engine = Arc::new(wiring::engine(&cx.config, wiring::Purpose::Process).await?);
    let (response, code) = match event {
        Event::Action(a) => {
            let action = a.action.clone();
            match lambda::handle_action(&engine, &cx.config.default_environment, a, Interface::Cli).await {
                Ok(answer) => (lambda::to_json(&answer), 0),
                Err(err) => (lambda::to_json(&err.answer(&action)), err.exit_code()),
            }
        }
        Event::Stream(records) => {
            let r = lambda::handle_stream(&engine, &records).await;
            let code = if r.batch_item_failures.is_empty() { 0 } else { 1 };
            (serde_json::to_value(r).expect("serialises"), code)
        }
        Event::Scheduled => (lambda::handle_scheduled(&engine, cx.config.member_sync_interval).await?, 0),
        Event::Asg(event) => {
            let answer = match crate::events::handle(&engine, event, Interface::Cli).await {
                Ok(answer) => answer,
                Err(crate::events::EventError::Refused(message)) => return Err(CliError::Usage(message)),
                Err(crate::events::EventError::Engine(e)) => return Err(e.into()),
            };
            // An ignored event (an ASG no environment lists) is not a failure; one that failed
            // somewhere is.
            let failed = answer["failures"].as_array().is_some_and(|f| !f.is_empty());
            (answer, if failed { 1 } else { 0 })
        }
        Event::Http(_) => {
            return Err(CliError::Usage("HTTP API events are served by `portcullis lambda` or `serve`, not invoke".into()));
        }
        Event::Deferred(job) => {
            let (request, failures) = engine.guard()?.apply_by_id(&job.request).await?;
            let code = if failures.is_empty() { 0 } else { 1 };
            (lambda::to_json(&lambda::ApplyAnswer::new(request, &failures)), code)
        }
    };
    announce(&engine).await;
    print_json(&response);
    Ok(ExitCode::from(code))
}

pub(super) async fn lambda(cx: &Context) -> Result<ExitCode, CliError> {
    let engine = Arc::new(wiring::engine(&cx.config, wiring::Purpose::Process).await?);
    let slack = wiring::lambda_slack_endpoint(&cx.config).await?.map(Arc::new);
    let app = Arc::new(crate::app::App::new(engine.clone(), &cx.config, slack));
    lambda::run(lambda::Handler::new(engine, app)).await.map_err(|e| CliError::Operational(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn serve(cx: Context) -> Result<ExitCode, CliError> {
    crate::serve::serve(cx.config).await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn open(a: OpenArgs, json: bool) -> Result<ExitCode, CliError> {
    use crate::open::{Credentials, OpenError, OpenOptions, default_server_id, default_sts_endpoint};
    let credentials = match (a.token, a.aws) {
        (Some(t), false) => Credentials::Token(t.trim().to_string()),
        (_, _) => Credentials::Aws {
            server_id: a
                .server_id
                .or_else(|| default_server_id(&a.server))
                .ok_or_else(|| CliError::Usage(format!("--server {:?} is not an http(s) URL", a.server)))?,
            sts_endpoint: a.sts_endpoint.unwrap_or_else(|| default_sts_endpoint(&|k| std::env::var(k).ok())),
        },
    };
    let options = OpenOptions {
        server: a.server,
        environment: a.env,
        credentials,
        once: a.once,
        renew_every: a.renew_every.map(std::time::Duration::from_secs),
        json,
        clock: Arc::new(portcullis_engine::SystemClock),
    };
    match crate::open::run(options).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(OpenError::Invalid(m)) => Err(CliError::Usage(m)),
        Err(OpenError::Refused(m)) => Err(CliError::Refused(m)),
        Err(OpenError::Failed(m)) => Err(CliError::Operational(m)),
    }
}
