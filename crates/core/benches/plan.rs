//! `plan()` at scale beside the reference planner (the planner as first written), min and
//! median of 5 runs each: 10,000 grants x 50 groups x 2 ports, with EC2's quota of 60 rules per
//! group (the overflow path) and with the quota off (every authorization built). Prints
//! figures, asserts only that both planners decide the same. Run by `scripts/bench`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use portcullis_core::{
    Cidr, Description, Environment, Family, FamilyCounts, Grant, ListInfo, Marker, ObservedRule, Owner, Plan, PlanInput, PortSet,
    Route, RuleQuota, Source, Target, TargetId, Timestamp, plan, reference_plan,
};

const REGION: &str = "us-east-1";

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

fn grant(i: u32, now: Timestamp) -> Grant {
    Grant {
        cidr: Cidr::parse(&format!("{}.{}.{}.{}", 11 + (i >> 16), (i >> 8) & 255, i & 255, 1)).unwrap(),
        environment: dev(),
        owner: Owner::named(&format!("user{}", i % 1000)),
        source: Source::Manual,
        description: Description::parse("bench").unwrap(),
        created_at: now,
        expires_at: Some(now + time::Duration::days(1)),
    }
}

/// Min and median of `runs` timings of `f`, and its last result.
fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times[0], times[runs / 2], last.expect("at least one run"))
}

struct World {
    grants: Vec<Grant>,
    marker: Marker,
    history: BTreeSet<Environment>,
    now: Timestamp,
}

impl World {
    fn input<'a>(&'a self, targets: &'a [Target], quota: RuleQuota) -> PlanInput<'a> {
        PlanInput {
            grants: &self.grants,
            targets,
            marker: &self.marker,
            environments_with_history: &self.history,
            quota,
            now: self.now,
        }
    }

    /// One line: both planners' min / median, and what they decided (the same, or it panics).
    fn row(&self, label: &str, targets: &[Target], quota: RuleQuota) -> Plan {
        let (rmin, rmed, reference) = timed(5, || reference_plan(&self.input(targets, quota)));
        let (min, med, fast) = timed(5, || plan(&self.input(targets, quota)));
        assert_eq!(fast, reference, "the planners disagree");
        let ops = fast.authorize_count() + fast.revoke_count();
        let label = format!("{label} ({ops} ops, {} overflows)", fast.overflows.len());
        println!("  {label:<62} {rmin:>9.1?} / {rmed:>9.1?} {min:>9.1?} / {med:>9.1?}");
        fast
    }
}

fn main() {
    let now = Timestamp::now_utc();
    let world =
        World { grants: (0..10_000).map(|i| grant(i, now)).collect(), marker: Marker::default(), history: [dev()].into(), now };
    let mut targets: Vec<Target> = (0..50)
        .map(|i| Target {
            list: None,
            id: TargetId { region: REGION.into(), group_id: format!("sg-{i:04}") },
            route: Route::region(REGION),
            name: format!("g{i}"),
            environment: dev(),
            ports: PortSet::alb(),
            rules: vec![],
            counts: FamilyCounts::default(),
        })
        .collect();
    let unlimited = RuleQuota { ipv4: usize::MAX / 4, ipv6: usize::MAX / 4 };
    println!("plan(): 10,000 grants x 50 groups x 2 ports, min / median of 5 runs");
    println!("  {:<62} {:>21} {:>21}", "", "reference planner", "plan()");
    world.row("quota 60 per group, empty groups", &targets, RuleQuota::default());
    // 45 groups and 5 prefix lists of 1,000 entries: both capacities overflow.
    let mut mixed = targets.clone();
    for t in mixed.iter_mut().skip(45) {
        t.ports = PortSet::entries();
        t.list = Some(ListInfo { version: 1, max_entries: 1_000, family: Family::Ipv4 });
    }
    world.row("45 groups (quota 60) + 5 prefix lists (MaxEntries 1,000)", &mixed, RuleQuota::default());
    let p = world.row("quota off, empty groups", &targets, unlimited);
    for (target, change) in targets.iter_mut().zip(&p.changes) {
        target.rules = change
            .authorize
            .iter()
            .map(|r| ObservedRule {
                cidr: r.cidr,
                raw_cidr: r.ec2_cidr.clone(),
                ports: r.ports,
                description: Some(r.description.clone()),
            })
            .collect();
        target.counts = FamilyCounts { ipv4: target.rules.len(), ipv6: 0 };
    }
    world.row("quota off, steady state (1,000,000 rules present)", &targets, unlimited);
}
