//! How the CLI shows reports as text.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_engine::{Engine, Progress, ReconcileReport};
use serde::Serialize;

/// Progress as one line on stderr, redrawn at most ten times a second and cleared at the end.
#[derive(Default)]
struct TerminalProgress {
    drawn: Mutex<Option<Instant>>,
}

impl Progress for TerminalProgress {
    fn update(&self, what: &'static str, done: usize, total: usize) {
        let mut drawn = self.drawn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if done < total && drawn.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
            return;
        }
        *drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{what}: {done}/{total}");
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.drawn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// The engine, drawing progress over many groups on stderr when stderr is a terminal and the
/// output is text; with `--json` or without a terminal, nothing extra is written.
pub(super) fn with_progress(engine: Engine, json: bool) -> Engine {
    if json || !std::io::stderr().is_terminal() {
        return engine;
    }
    engine.with_progress(Arc::new(TerminalProgress::default()))
}

pub(super) fn print_json<T: Serialize>(value: &T) {
    crate::outln!("{}", serde_json::to_string_pretty(value).expect("values serialise"));
}

pub(super) fn exit_for(report: &ReconcileReport) -> ExitCode {
    if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

pub(super) fn print_report(r: &ReconcileReport) {
    if r.targets == 0 && r.skipped.is_empty() && r.observe_failures.is_empty() {
        // A first run with nothing configured: say what would configure something.
        crate::outln!(
            "no target: no security group or prefix list is managed here. Name some with \
             [[environments.<env>.targets]] in a configuration file (--config), or set ENABLE_SG_DISCOVERY=true \
             (with AWS_REGION) to manage the groups tagged WhitelistManaged=true"
        );
        return;
    }
    crate::outln!(
        "{} groups: authorized {}, revoked {}, updated {}, unchanged {}, unowned left alone {}",
        r.targets,
        r.authorized,
        r.revoked,
        r.updated,
        r.unchanged,
        r.unowned_left_alone
    );
    for w in &r.withheld {
        crate::outln!(
            "left in place: {} on {} is marked for {}, but this store has never recorded anything for {}; \
             add a grant for it to keep it, or remove the rule by hand",
            w.rule.ec2_cidr,
            w.target,
            w.environment,
            w.environment
        );
    }
    for s in &r.stale_descriptions {
        crate::outln!(
            "description left out of date: {} in prefix list {} says {:?}, not {:?} (EC2 re-describes an entry only by \
             removing it, which would cut access)",
            s.cidr,
            s.target,
            s.description.as_deref().unwrap_or_default(),
            s.wanted
        );
    }
    for s in &r.skipped {
        crate::outln!("skipped {}: {}", s.id, s.reason);
    }
    for f in r.failures() {
        eprintln!("failed: {f}");
    }
}
