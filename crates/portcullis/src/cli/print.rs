//! How the CLI shows reports as text.

use std::process::ExitCode;

use portcullis_engine::ReconcileReport;
use serde::Serialize;

pub(super) fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("values serialise"));
}

pub(super) fn exit_for(report: &ReconcileReport) -> ExitCode {
    if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

pub(super) fn print_report(r: &ReconcileReport) {
    println!(
        "{} groups: authorized {}, revoked {}, updated {}, unchanged {}, unowned left alone {}",
        r.targets, r.authorized, r.revoked, r.updated, r.unchanged, r.unowned_left_alone
    );
    for w in &r.withheld {
        println!(
            "left in place: {} on {} is marked for {}, but this store has never recorded anything for {}; \
             add a grant for it to keep it, or remove the rule by hand",
            w.rule.ec2_cidr, w.target, w.environment, w.environment
        );
    }
    for s in &r.skipped {
        println!("skipped {}: {}", s.id, s.reason);
    }
    for f in r.failure_messages() {
        eprintln!("failed: {f}");
    }
}
