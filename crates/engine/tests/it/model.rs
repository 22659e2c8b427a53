//! A model-based test: random sequences of adds, refreshes, removes, passing time, engine
//! restarts on the same SQLite file, and injected EC2 faults (`FaultyFirewall`) switched on and
//! off, checked against a reference model of what the grants should be.
//!
//! During the run: no rule without our marker ever changes, a grant whose apply was
//! acknowledged is on every group for as long as it lives, and a grant is recorded expired
//! only once its rule is gone. After the faults stop and one
//! reconcile: the firewall holds exactly the model's live grants, every expired grant is gone
//! and none acknowledged is lost. Expiry latency (from `expires_at` to the rule gone, on
//! virtual time) is measured from the firewall's record of what each call really changed.
//!
//! `PORTCULLIS_MODEL_OPS` (default 1,000) and `PORTCULLIS_MODEL_SEED` choose the run;
//! `scripts/soak` runs 100,000.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_core::{
    Cidr, Description, GrantKey, Interface, Marker, ObservedRule, Policy, PortRange, Protocol, RuleQuota, Source, TargetId,
    Timestamp, Ttl,
};
use portcullis_engine::{
    AddRequest, Cause, Clock, Engine, FaultyFirewall, MemoryFirewall, Requester, Scope, Settings, TokioClock,
};
use portcullis_store::{SqliteStore, Store};
use time::Duration;
use time::macros::datetime;
use tokio::sync::watch;

use crate::{dev, spec};

const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const POOL: u8 = 20;
const FAULT_RATE: f64 = 0.2;

/// The reference model: what each key's grant should be, and whether its apply was acknowledged.
#[derive(Debug, Clone)]
struct Modelled {
    expires_at: Timestamp,
    /// The add that made or refreshed it answered with a clean apply.
    acknowledged: bool,
}

/// A grant's life that ended by expiry: when, and when the same key was added again (if it was).
struct Expiry {
    cidr: String,
    at: Timestamp,
    until: Option<Timestamp>,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn hand_rules() -> Vec<ObservedRule> {
    let rule = |cidr: &str, port, description: Option<&str>| ObservedRule {
        cidr: Cidr::parse(cidr).unwrap(),
        raw_cidr: Cidr::parse(cidr).unwrap().to_string(),
        ports: PortRange::single(Protocol::Tcp, port),
        description: description.map(str::to_string),
    };
    vec![
        rule("203.0.113.50", 22, Some("bastion")),
        rule("203.0.113.51", 7233, None),
        // Our pool's first address, on another port, by hand.
        rule("198.51.100.1", 22, Some("pc-ish but not ours")),
    ]
}

struct Running {
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(path: &std::path::Path, firewall: Arc<FaultyFirewall>, clock: Arc<TokioClock>) -> Running {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path).unwrap());
    let settings = Settings {
        specs: REGIONS.iter().map(|r| spec(r)).collect(),
        policies: BTreeMap::from([(dev(), Policy::default())]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    };
    let engine = Arc::new(Engine::new(store, firewall, clock, settings));
    let (stop, stopped) = watch::channel(false);
    let sweeper = tokio::spawn({
        let (engine, stopped) = (engine.clone(), stopped.clone());
        async move { engine.run_sweeper(stopped).await }
    });
    let reconciler = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_reconciler(Duration::seconds(60), stopped).await }
    });
    Running { engine, stop, tasks: vec![sweeper, reconciler] }
}

impl Running {
    /// Kills the process: its loops stop wherever they are, mid-apply included.
    fn kill(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.abort();
        }
    }
}

fn ours(firewall: &MemoryFirewall, region: &str) -> BTreeSet<String> {
    let marker = Marker::default();
    firewall
        .rules(region, &format!("sg-{region}"))
        .into_iter()
        .filter(|r| r.description.as_deref().and_then(|d| marker.decode(d)).is_some())
        .map(|r| r.raw_cidr)
        .collect()
}

fn theirs(firewall: &MemoryFirewall, region: &str) -> Vec<ObservedRule> {
    let marker = Marker::default();
    let mut rules: Vec<ObservedRule> = firewall
        .rules(region, &format!("sg-{region}"))
        .into_iter()
        .filter(|r| r.description.as_deref().and_then(|d| marker.decode(d)).is_none())
        .collect();
    rules.sort_by(|a, b| (&a.raw_cidr, a.ports).cmp(&(&b.raw_cidr, b.ports)));
    rules
}

/// How long each ended-by-expiry grant's rule stayed on each group past its expiry (up to the
/// key's next grant, if one came first); `None` for a rule still there when the run ended.
fn expiry_latencies(firewall: &MemoryFirewall, expiries: &[Expiry], end: Timestamp) -> Vec<Option<Duration>> {
    // Each rule's timeline, in order: (at, added).
    let mut timelines: BTreeMap<(TargetId, String), Vec<(Timestamp, bool)>> = BTreeMap::new();
    for f in firewall.effects() {
        timelines.entry((f.group, f.raw_cidr)).or_default().push((f.at, f.added));
    }
    let mut out = Vec::new();
    for e in expiries {
        for region in REGIONS {
            let group = TargetId { region: region.into(), group_id: format!("sg-{region}") };
            let timeline = timelines.get(&(group, e.cidr.clone())).map(Vec::as_slice).unwrap_or_default();
            let split = timeline.partition_point(|(at, _)| *at < e.at);
            let present = split > 0 && timeline[split - 1].1;
            if !present {
                continue;
            }
            let gone = timeline[split..].iter().find(|(_, added)| !added).map(|(at, _)| *at);
            out.push(match (gone, e.until) {
                (Some(at), Some(until)) => Some(at.min(until) - e.at),
                (Some(at), None) if at <= end => Some(at - e.at),
                (None, Some(until)) => Some(until - e.at),
                _ => None,
            });
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn random_operations_with_faults_agree_with_the_model() {
    let ops = env_number("PORTCULLIS_MODEL_OPS", 1_000);
    let seed = env_number("PORTCULLIS_MODEL_SEED", 0x5eed_0016);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let clock = Arc::new(TokioClock::new(datetime!(2026-06-01 00:00 UTC)));
    let memory = Arc::new(MemoryFirewall::new(clock.clone()));
    for region in REGIONS {
        memory.put_group(region, &format!("sg-{region}"), &[("WhitelistManaged", "true")]);
        for rule in hand_rules() {
            memory.put_rule(region, &format!("sg-{region}"), rule);
        }
    }
    let before: Vec<Vec<ObservedRule>> = REGIONS.iter().map(|r| theirs(&memory, r)).collect();
    let firewall = Arc::new(FaultyFirewall::new(memory.clone(), seed));
    let mut running = start(&path, firewall.clone(), clock.clone());

    let mut model: BTreeMap<String, Modelled> = BTreeMap::new();
    let mut expiries: Vec<Expiry> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let by = Requester::named("model", Interface::Cli);
    for step in 0..ops {
        let cidr = format!("198.51.100.{}/32", 1 + rng.below(u64::from(POOL)));
        let key = GrantKey { cidr: Cidr::parse(&cidr).unwrap(), environment: dev() };
        let now = clock.now();
        let op = match rng.below(100) {
            0..45 => {
                let ttl = ["1m", "5m", "30m"][rng.below(3) as usize];
                let request = AddRequest {
                    cidr: key.cidr,
                    environment: dev(),
                    ttl: Some(Ttl::parse(ttl).unwrap()),
                    description: Description::parse("").unwrap(),
                    source: Source::Manual,
                    by: by.clone(),
                };
                let live = model.get(&cidr).filter(|m| m.expires_at > now).cloned();
                match running.engine.grants().add(request).await {
                    Ok(outcome) => {
                        let expected =
                            (now + Ttl::parse(ttl).unwrap().duration()).max(live.as_ref().map_or(now, |m| m.expires_at));
                        if outcome.grant.expires_at != Some(expected) {
                            violations.push(format!(
                                "step {step}: {cidr} stored until {:?}, model says {expected}",
                                outcome.grant.expires_at
                            ));
                        }
                        let clean = outcome.report.as_ref().map(|r| !r.failed());
                        let acknowledged = match (clean, &live) {
                            (Some(clean), Some(live)) => clean || live.acknowledged,
                            (Some(clean), None) => clean,
                            (None, Some(live)) => live.acknowledged,
                            (None, None) => false,
                        };
                        if live.is_none()
                            && let Some(old) = model.get(&cidr)
                        {
                            expiries.push(Expiry { cidr: cidr.clone(), at: old.expires_at, until: Some(now) });
                        }
                        model.insert(cidr.clone(), Modelled { expires_at: expected, acknowledged });
                    }
                    Err(err) => violations.push(format!("step {step}: add {cidr} failed: {err}")),
                }
                "add"
            }
            45..65 => {
                let live = model.get(&cidr).is_some_and(|m| m.expires_at > now);
                match running.engine.grants().remove(&key, &by).await {
                    Ok(_) => {}
                    Err(err) if live => violations.push(format!("step {step}: remove of live {cidr} failed: {err}")),
                    // Gone already, or expired and swept meanwhile.
                    Err(_) => {}
                }
                if let Some(old) = model.remove(&cidr)
                    && !live
                {
                    expiries.push(Expiry { cidr: cidr.clone(), at: old.expires_at, until: Some(now) });
                }
                "remove"
            }
            65..90 => {
                let pause = [1, 5, 20, 60, 200][rng.below(5) as usize];
                tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
                "time"
            }
            90..95 => {
                running.kill();
                running = start(&path, firewall.clone(), clock.clone());
                "restart"
            }
            _ => {
                firewall.set_rate(if rng.below(2) == 0 { 0.0 } else { FAULT_RATE });
                "faults"
            }
        };
        *counts.entry(op).or_default() += 1;

        // The invariants, after every step.
        let now = clock.now();
        let overdue: BTreeSet<String> =
            running.engine.status(&by).await.unwrap().overdue.into_iter().map(|g| g.cidr.to_string()).collect();
        for (i, region) in REGIONS.iter().enumerate() {
            if theirs(&memory, region) != before[i] {
                violations.push(format!("step {step} ({op}): a rule without our marker changed in {region}"));
            }
            let present = ours(&memory, region);
            for (cidr, m) in &model {
                if m.acknowledged && m.expires_at > now && !present.contains(cidr) {
                    violations.push(format!("step {step} ({op}): acknowledged {cidr} missing from {region}"));
                }
                // Recorded as expired (no longer stored) only once its rule is gone.
                if m.expires_at <= now && !overdue.contains(cidr) && present.contains(cidr) {
                    violations.push(format!("step {step} ({op}): {cidr} recorded expired but still open in {region}"));
                }
            }
        }
        if violations.len() > 20 {
            break;
        }
    }

    // Faults stop; retries settle; one reconcile and one sweep.
    firewall.set_rate(0.0);
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    running.engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    running.engine.sweep().await.unwrap();
    let now = clock.now();
    for (cidr, m) in &model {
        if m.expires_at <= now {
            expiries.push(Expiry { cidr: cidr.clone(), at: m.expires_at, until: None });
        }
    }
    let live: BTreeSet<String> = model.iter().filter(|(_, m)| m.expires_at > now).map(|(c, _)| c.clone()).collect();
    for (i, region) in REGIONS.iter().enumerate() {
        let present = ours(&memory, region);
        if present != live {
            violations.push(format!(
                "after the run, {region} holds {:?} more and {:?} fewer than the model",
                present.difference(&live).collect::<Vec<_>>(),
                live.difference(&present).collect::<Vec<_>>()
            ));
        }
        if theirs(&memory, region) != before[i] {
            violations.push(format!("after the run, a rule without our marker changed in {region}"));
        }
    }
    let stored: BTreeSet<String> =
        running.engine.grants().live_grants(&Scope::All, &by).await.unwrap().into_iter().map(|g| g.cidr.to_string()).collect();
    if stored != live {
        violations.push(format!("after the run the store holds {stored:?}, the model {live:?}"));
    }
    let overdue = running.engine.status(&by).await.unwrap().overdue;
    if !overdue.is_empty() {
        violations.push(format!("after the run, expired grants are still stored: {overdue:?}"));
    }

    let measured = expiry_latencies(&memory, &expiries, now);
    let never = measured.iter().filter(|l| l.is_none()).count();
    let mut latencies: Vec<Duration> = measured.into_iter().flatten().collect();
    latencies.sort();
    let p99 = latencies.get(latencies.len().saturating_sub(1) * 99 / 100).copied();
    let injected: u64 = firewall.injected().values().sum();
    println!(
        "model: {ops} operations {counts:?}, {injected} faults injected {:?}, {} expiries measured, p99 expiry latency {:?}, \
         {} violations",
        firewall.injected(),
        latencies.len(),
        p99,
        violations.len() + never
    );
    running.kill();
    assert!(violations.is_empty(), "{} violations, first: {:#?}", violations.len(), &violations[..violations.len().min(10)]);
    assert_eq!(never, 0, "{never} expired rules outlived their grant until the key's next grant or the end");
    assert!(injected > 0, "the run injected no faults");
    assert!(p99.is_some_and(|p| p <= Duration::seconds(5)), "p99 from expires_at to rule gone: {p99:?}");
}
