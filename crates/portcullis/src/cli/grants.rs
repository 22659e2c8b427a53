//! The subcommands that change or show grants, the audit log and the store.

use std::process::ExitCode;

use portcullis_core::{Cidr, Description, Environment, GrantKey, ListedGrant, Source, Ttl, format_utc, time_left};
use portcullis_engine::{AddRequest, AuditQuery, Cause, Scope};

use super::print::{exit_for, print_json, print_report, with_progress};
use super::{CliError, Context, acting_user, announce, environment};
use crate::wiring;

#[derive(Debug, clap::Args)]
pub(super) struct AddArgs {
    /// IPv4 or IPv6 address or CIDR, e.g. 203.0.113.7 or 2001:db8::/48.
    #[arg(value_name = "IP|CIDR")]
    cidr: String,
    /// Environment (default: ENVIRONMENT, else dev).
    #[arg(long, value_name = "E")]
    env: Option<String>,
    /// How long: Nm (1-1440), Nh (1-24) or Nd (1-365); default 30d.
    #[arg(long, value_name = "T")]
    ttl: Option<String>,
    /// Why: printable text, at most 200 characters.
    #[arg(long, value_name = "D", default_value = "")]
    description: String,
    /// The user acting (default: the OS user).
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct RemoveArgs {
    #[arg(value_name = "IP|CIDR")]
    cidr: String,
    #[arg(long, value_name = "E")]
    env: Option<String>,
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ListArgs {
    #[arg(long, value_name = "E")]
    env: Option<String>,
    /// Every environment.
    #[arg(long, conflicts_with = "env")]
    all: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct RefreshArgs {
    #[arg(long, value_name = "E")]
    env: Option<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct AuditArgs {
    #[arg(long, value_name = "E")]
    env: Option<String>,
    /// Only events of this action (added, removed, expired, refused, change-approved, …).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Only events by this user (a name, or a Slack user's name or id).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Only events older than this id: the next page after the last id shown.
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// At most this many events (up to 10000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, clap::Args)]
pub(super) struct AdoptArgs {
    /// Only show what would be taken over.
    #[arg(long)]
    dry_run: bool,
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
}

pub(super) async fn add(cx: &Context, a: AddArgs) -> Result<ExitCode, CliError> {
    let cidr = Cidr::parse(&a.cidr)?;
    let ttl = a.ttl.map(|t| Ttl::parse(&t)).transpose()?;
    let description = Description::parse(&a.description)?;
    let environment = environment(&cx.config, a.env)?;
    let by = acting_user(a.as_user)?;
    let engine = wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?;
    let outcome = engine.grants().add(AddRequest { cidr, environment, ttl, description, source: Source::Manual, by }).await;
    announce(&engine).await;
    let outcome = outcome?;
    if cx.json {
        print_json(&outcome);
    } else {
        let verb = if outcome.refreshed { "refreshed" } else { "added" };
        let g = &outcome.grant;
        crate::outln!(
            "{verb} {} in {} until {} ({}), owner {}",
            g.cidr,
            g.environment,
            g.expires_at.map(format_utc).unwrap_or_else(|| "never".into()),
            g.expires_at.map(|t| time_left(t, engine.clock().now())).unwrap_or_default(),
            g.owner.name
        );
        match &outcome.report {
            Some(report) => print_report(report),
            None => crate::outln!("rules unchanged: no security group call was needed"),
        }
    }
    Ok(outcome.report.as_ref().map(exit_for).unwrap_or(ExitCode::SUCCESS))
}

pub(super) async fn remove(cx: &Context, a: RemoveArgs) -> Result<ExitCode, CliError> {
    let key = GrantKey { cidr: Cidr::parse(&a.cidr)?, environment: environment(&cx.config, a.env)? };
    let by = acting_user(a.as_user)?;
    let engine = wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?;
    let outcome = engine.grants().remove(&key, &by).await;
    announce(&engine).await;
    let outcome = outcome?;
    if cx.json {
        print_json(&outcome);
    } else {
        crate::outln!("removed {} from {}", outcome.grant.cidr, outcome.grant.environment);
        print_report(&outcome.report);
    }
    Ok(exit_for(&outcome.report))
}

pub(super) async fn list(cx: &Context, a: ListArgs) -> Result<ExitCode, CliError> {
    let scope = if a.all { Scope::All } else { Scope::Environment(environment(&cx.config, a.env)?) };
    let engine = wiring::engine(&cx.config, wiring::Purpose::Read).await?;
    let grants = engine.grants().live_grants(&scope, &acting_user(None)?).await?;
    let now = engine.clock().now();
    if cx.json {
        print_json(&ListedGrant::all(&grants));
    } else if grants.is_empty() {
        crate::outln!("no live grants");
    } else {
        for g in &grants {
            crate::outln!(
                "{:<20} {:<8} {:<13} {:<24} {:<24} {}",
                g.cidr.to_string(),
                g.environment.as_str(),
                g.source.as_str(),
                g.owner.name,
                g.expires_at.map(|t| time_left(t, now)).unwrap_or_else(|| "no expiry".into()),
                g.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn refresh(cx: &Context, a: RefreshArgs) -> Result<ExitCode, CliError> {
    let scope = match a.env {
        Some(name) => Scope::Environment(Environment::parse(&name)?),
        None => Scope::All,
    };
    let engine =
        with_progress(wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: a.dry_run, json: cx.json }).await?, cx.json);
    let report = engine.grants().reconcile(scope, Cause::Refresh).await;
    // Guard compares its groups with their baselines too (not in a dry run: it reverts).
    let guard = if engine.guarding().is_some() && !a.dry_run { Some(engine.guard()?.sweep().await) } else { None };
    announce(&engine).await;
    let report = report?;
    let guard = guard.transpose()?;
    if cx.json {
        match &guard {
            Some(g) => print_json(&serde_json::json!({"reconcile": report, "guard": g})),
            None => print_json(&report),
        }
    } else {
        print_report(&report);
        if let Some(g) = &guard {
            crate::outln!(
                "guard: {} groups compared, {} changes reverted, {} without a baseline",
                g.groups,
                g.reverted.len(),
                g.without_baseline.len()
            );
            for f in &g.failures {
                eprintln!("failed: guard: {f}");
            }
        }
    }
    let guard_failed = guard.is_some_and(|g| !g.failures.is_empty());
    Ok(if guard_failed { ExitCode::from(1) } else { exit_for(&report) })
}

pub(super) async fn sweep(cx: &Context) -> Result<ExitCode, CliError> {
    let engine = wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?;
    let report = engine.sweep().await;
    announce(&engine).await;
    let report = report?;
    if cx.json {
        print_json(&report);
    } else {
        crate::outln!("{} grants expired", report.expired.len());
        for g in &report.expired {
            crate::outln!("  {} in {}", g.cidr, g.environment);
        }
        if let Some(r) = &report.reconcile {
            print_report(r);
        }
    }
    Ok(report.reconcile.as_ref().map(exit_for).unwrap_or(ExitCode::SUCCESS))
}

pub(super) async fn audit(cx: &Context, a: AuditArgs) -> Result<ExitCode, CliError> {
    let environment = a.env.map(|e| Environment::parse(&e)).transpose()?;
    let action = a.action.map(|text| crate::app::audit_action(&text)).transpose().map_err(CliError::Usage)?;
    let query = AuditQuery { environment, action, user: a.user, before: a.before, limit: a.limit };
    let engine = wiring::engine(&cx.config, wiring::Purpose::Read).await?;
    let events = engine.grants().audit(&query, &acting_user(None)?).await?;
    if cx.json {
        print_json(&events);
    } else {
        for e in &events {
            crate::outln!(
                "{} {:<14} {:<8} {:<20} {:<10} {}",
                format_utc(e.at),
                e.action.as_str(),
                e.environment,
                e.cidr_label(),
                e.interface.as_str(),
                e.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn init(cx: &Context) -> Result<ExitCode, CliError> {
    let report = wiring::init_store(&cx.config).await?;
    if cx.json {
        print_json(&serde_json::json!({
            "created": report.created, "existing": report.existing, "warnings": report.warnings,
        }));
    } else {
        for t in &report.created {
            crate::outln!("created {t}");
        }
        for t in &report.existing {
            crate::outln!("exists  {t} (left as it is)");
        }
        for w in &report.warnings {
            crate::outln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn adopt(cx: &Context, a: AdoptArgs) -> Result<ExitCode, CliError> {
    let by = acting_user(a.as_user)?;
    let engine =
        with_progress(wiring::engine(&cx.config, wiring::Purpose::Change { dry_run: false, json: cx.json }).await?, cx.json);
    let report = engine.grants().adopt(a.dry_run, &by).await?;
    if cx.json {
        print_json(&report);
    } else {
        let verb = if a.dry_run { "would take over" } else { "taking over" };
        let now = engine.grants().clock().now();
        for g in &report.seed_grants {
            let until = g.expires_at.map(portcullis_core::format_utc).unwrap_or_default();
            let when =
                if g.expires_at.is_some_and(|at| at <= now) { "expired; the next sweep revokes it" } else { "expires then" };
            let made = if a.dry_run { "would be a grant" } else { "is a grant" };
            crate::outln!(
                "{} in {} (its rule says \"expired at {until}\") {made} of {}: {when}",
                g.cidr,
                g.environment,
                g.owner.name
            );
        }
        for r in &report.seed_refused {
            crate::outln!("left as it is: {} in {}: {}", r.grant.cidr, r.grant.environment, r.reason);
        }
        for c in &report.changes {
            for r in &c.update_descriptions {
                crate::outln!("{verb} {} {} on {}: description becomes {:?}", r.ec2_cidr, r.ports, c.target, r.description);
            }
        }
        for f in &report.observe_failures {
            eprintln!("failed: could not describe {}: {}", f.group_id.as_deref().unwrap_or(&f.region), f.error);
        }
        for o in report.outcomes.iter().filter(|o| o.error.is_some()) {
            eprintln!("failed: {}: {}", o.target, o.error.as_deref().unwrap_or_default());
        }
        match (report.rules(), a.dry_run) {
            (0, _) => crate::outln!(
                "nothing to take over: no unmarked rule matches a live grant or says when it expires (\"expired at …\")"
            ),
            (n, true) => crate::outln!("{n} rules would be taken over; run without --dry-run to do it"),
            (n, false) => crate::outln!("{n} rules taken over"),
        }
    }
    Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
