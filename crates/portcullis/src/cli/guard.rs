//! Guard's commands: `guard baseline`, `guard sweep`, `requests`, `approve`, `deny`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis_core::guard::{ChangeRequest, RequestStatus, Verdict};
use portcullis_engine::{Apply, DecisionOutcome, GuardError};

use super::print::{print_json, with_progress};
use super::{CliError, Context, acting_user, announce};
use crate::wiring;

impl From<GuardError> for CliError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Engine(e) => e.into(),
            other => CliError::Usage(other.to_string()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum GuardCommand {
    /// Record the current rules of every guarded group as approved, so enabling guard
    /// reverts nothing by surprise (our own rules are left out: they are the reconcile's).
    Baseline {
        /// Only say what would be recorded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compare every guarded group with its baseline now: revert and file what differs, expire
    /// undecided requests, apply approved ones an earlier apply missed.
    Sweep,
}

#[derive(Debug, Args)]
pub(super) struct RequestsArgs {
    /// pending (default), approved, denied, expired or all.
    #[arg(long, default_value = "pending")]
    status: String,
}

#[derive(Debug, Args)]
pub(super) struct ApproveArgs {
    /// The request's id (`r-…`).
    id: String,
    /// Act as this user (an approver's Slack id or user name); default the OS user.
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
    /// Approve an addition for this long only (`24h`, `7d`): its rules become a timed rule,
    /// with our marker, revoked when it expires.
    #[arg(long = "for", value_name = "TTL", value_parser = |s: &str| portcullis_core::Ttl::parse(s).map_err(|e| e.to_string()))]
    term: Option<portcullis_core::Ttl>,
    /// As the change's requester, apply your own addition at once as a timed rule, for
    /// `--for` or at most `break_glass_ttl` (default 4h); every approver is told. Needs
    /// `[guard] break_glass = true` and `--reason`.
    #[arg(long, requires = "reason")]
    break_glass: bool,
    /// Why the glass was broken (with `--break-glass`).
    #[arg(long, requires = "break_glass")]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct DenyArgs {
    id: String,
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
    /// Why, for the requester and the audit log.
    #[arg(long)]
    reason: Option<String>,
}

pub(super) async fn run(cx: &Context, command: GuardCommand) -> Result<ExitCode, CliError> {
    let engine =
        with_progress(wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?, cx.json);
    match command {
        GuardCommand::Baseline { dry_run } => {
            let report = engine.guard()?.record_baseline(dry_run, &acting_user(None)?).await?;
            if cx.json {
                print_json(&report);
            } else {
                let verb = if dry_run { "would record" } else { "recorded" };
                for (group, rules) in &report.groups {
                    crate::outln!("{verb} {} ({}): {rules} rules approved as they are", group.group_id, group.region);
                }
                for f in &report.failures {
                    eprintln!("failed: {f}");
                }
            }
            announce(&engine).await;
            Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        GuardCommand::Sweep => {
            let report = engine.guard()?.sweep().await;
            announce(&engine).await;
            let report = report?;
            if cx.json {
                print_json(&report);
            } else {
                crate::outln!("{} guarded groups compared with their baselines", report.groups);
                for r in &report.reverted {
                    crate::outln!("reverted a change no event reported: request {} on {} ({})", r.id, r.group_id, r.region);
                }
                for g in &report.without_baseline {
                    crate::outln!(
                        "no baseline for {} ({}): only reported; run `portcullis guard baseline`",
                        g.group_id,
                        g.region
                    );
                }
                for id in &report.expired {
                    crate::outln!("request {id} expired undecided");
                }
                for f in &report.failures {
                    eprintln!("failed: {f}");
                }
            }
            Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

pub(super) async fn requests(cx: &Context, a: RequestsArgs) -> Result<ExitCode, CliError> {
    let status = match a.status.as_str() {
        "all" => None,
        s => Some(RequestStatus::parse(s).ok_or_else(|| {
            CliError::Usage(format!("--status {s:?}: use pending, approved, applied, failed, denied, expired or all"))
        })?),
    };
    let engine = wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?;
    let requests = engine.guard()?.requests(status, &acting_user(None)?).await?;
    if cx.json {
        print_json(&requests);
    } else if requests.is_empty() {
        crate::outln!("no {} requests", a.status);
    } else {
        for r in &requests {
            print_request(r);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_request(r: &ChangeRequest) {
    let who = r.requester_user.as_ref().map(|u| format!("{} ({u})", r.requester)).unwrap_or_else(|| r.requester.clone());
    crate::outln!("{}  {}  {} in {} ({})  by {who}", r.id, r.status.as_str(), r.group_id, r.region, r.account);
    for line in r.rules_in_words() {
        crate::outln!("    {line}");
    }
    if let Some(term) = r.term_in_words() {
        crate::outln!("    temporary: {term}");
    }
    if let Some(reason) = &r.break_glass {
        crate::outln!("    break-glass: {reason}");
    }
    if let Some(failure) = &r.failure {
        crate::outln!("    failed: {failure}");
    }
    for note in &r.notes {
        crate::outln!("    note: {note}");
    }
}

async fn decide(cx: &Context, id: &str, verdict: Verdict, as_user: Option<String>) -> Result<ExitCode, CliError> {
    let by = acting_user(as_user)?;
    let engine = wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?;
    let outcome = engine.guard()?.decide(id, verdict, &by, Apply::Now).await;
    announce(&engine).await;
    match outcome? {
        DecisionOutcome::Refused(refusal) => Err(CliError::Refused(refusal.to_string())),
        DecisionOutcome::Decided { request, failures } => {
            if cx.json {
                print_json(&serde_json::json!({"outcome": "decided", "request": request, "failures": failures}));
            } else {
                print_request(&request);
                for f in &failures {
                    eprintln!("failed: {f}");
                }
            }
            Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

pub(super) async fn approve(cx: &Context, a: ApproveArgs) -> Result<ExitCode, CliError> {
    let verdict = match (a.break_glass, a.reason) {
        (true, Some(reason)) => {
            let config = cx.config.guard.as_ref();
            let most = config.and_then(|g| g.approvers.break_glass).unwrap_or(time::Duration::hours(4));
            Verdict::BreakGlass { reason, term: a.term.map_or(most, |t| t.duration()) }
        }
        _ => a.term.map_or(Verdict::Approve, |t| Verdict::ApproveFor(t.duration())),
    };
    decide(cx, &a.id, verdict, a.as_user).await
}

pub(super) async fn deny(cx: &Context, a: DenyArgs) -> Result<ExitCode, CliError> {
    decide(cx, &a.id, Verdict::Deny { reason: a.reason }, a.as_user).await
}
