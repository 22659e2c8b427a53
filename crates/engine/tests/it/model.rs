//! A model-based test: sequences of adds, refreshes, removes, passing time, engine restarts on
//! the same SQLite file, and injected EC2 faults (`FaultyFirewall`) switched on and off,
//! checked against a reference model of what the grants should be, after every step.
//!
//! After every step, on every group: no rule without our marker ever changed; our rules are
//! exactly the model's live grants, except a grant whose last apply failed (the model keeps
//! such keys "in doubt" until a fault-free stretch long enough for the periodic reconcile has
//! passed); a remove that answered cleanly left no rule; an expired grant's rule is gone within
//! [`EXPIRY_MAX`] of its expiry once faults are off; and a grant is recorded expired only once
//! its rule is gone. At the end, after a fault-free wait and before anything the test runs
//! could repair it: the firewall and the store hold exactly the model's live grants.
//!
//! Two runs: `proptest` sequences, which shrink to a short failing sequence, and one long
//! run, `PORTCULLIS_MODEL_OPS` operations (default 1,000; `scripts/soak` runs 100,000) from
//! `PORTCULLIS_MODEL_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_core::{
    Cidr, Description, GrantKey, Interface, Marker, ObservedRule, Policy, PortRange, Protocol, RuleQuota, Source, TargetId,
    Timestamp, Ttl,
};
use portcullis_engine::{AddRequest, Clock, Engine, FaultyFirewall, MemoryFirewall, Requester, Settings, TokioClock};
use portcullis_store::{SqliteStore, Store};
use proptest::prelude::*;
use time::Duration;
use time::macros::datetime;
use tokio::sync::watch;

use crate::{dev, spec};

const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const POOL: u8 = 20;
const FAULT_RATE: f64 = 0.2;
const TTLS: [&str; 3] = ["1m", "5m", "30m"];
const PAUSES: [u64; 5] = [1, 5, 20, 60, 200];
/// The periodic reconcile's interval in these runs.
const RECONCILE_EVERY: Duration = Duration::seconds(60);
/// The longest an expired grant's rule may stay once faults are off: the sweeper wakes at the
/// expiry itself; a sweep that met a fault retries within 5 s.
const EXPIRY_MAX: Duration = Duration::seconds(6);
/// How long after faults stop a failed apply must have been repaired: the periodic reconcile's
/// interval and its rounds' retries.
const REPAIR_MAX: Duration = Duration::seconds(65);

/// One step of a run.
#[derive(Debug, Clone)]
enum Op {
    Add { key: u8, ttl: usize },
    Remove { key: u8 },
    Wait { secs: u64 },
    Restart,
    Faults(bool),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Wait { .. } => "time",
            Op::Restart => "restart",
            Op::Faults(_) => "faults",
        }
    }
}

/// The long run's operations, in the proportions the shrinking runs use.
fn op_from(rng: &mut Rng) -> Op {
    let key = rng.below(u64::from(POOL)) as u8;
    match rng.below(100) {
        0..45 => Op::Add { key, ttl: rng.below(3) as usize },
        45..65 => Op::Remove { key },
        65..90 => Op::Wait { secs: PAUSES[rng.below(5) as usize] },
        90..95 => Op::Restart,
        _ => Op::Faults(rng.below(2) == 1),
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..POOL;
    prop_oneof![
        9 => (key.clone(), 0..TTLS.len()).prop_map(|(key, ttl)| Op::Add { key, ttl }),
        4 => key.prop_map(|key| Op::Remove { key }),
        5 => prop::sample::select(PAUSES.to_vec()).prop_map(|secs| Op::Wait { secs }),
        1 => Just(Op::Restart),
        1 => any::<bool>().prop_map(Op::Faults),
    ]
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

fn cidr_of(key: u8) -> String {
    format!("198.51.100.{}/32", 1 + key)
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
        async move { engine.run_reconciler(RECONCILE_EVERY, stopped).await }
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

/// One run: the world, the model, and what was seen.
struct Run {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<TokioClock>,
    memory: Arc<MemoryFirewall>,
    firewall: Arc<FaultyFirewall>,
    running: Option<Running>,
    before: Vec<Vec<ObservedRule>>,
    model: BTreeMap<String, Modelled>,
    /// Keys whose last apply (an add's or a remove's) failed, and when: their rule may or may
    /// not be there until the periodic reconcile repairs it.
    doubt: BTreeMap<String, Timestamp>,
    /// Since when no fault has been injected (`None`: faults are on now).
    calm_since: Option<Timestamp>,
    expiries: Vec<Expiry>,
    violations: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl Run {
    fn new(seed: u64) -> Run {
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
        let before = REGIONS.iter().map(|r| theirs(&memory, r)).collect();
        let firewall = Arc::new(FaultyFirewall::new(memory.clone(), seed));
        let running = start(&path, firewall.clone(), clock.clone());
        let calm_since = Some(clock.now());
        Run {
            _dir: dir,
            path,
            clock,
            memory,
            firewall,
            running: Some(running),
            before,
            model: BTreeMap::new(),
            doubt: BTreeMap::new(),
            calm_since,
            expiries: Vec::new(),
            violations: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.running.as_ref().expect("running").engine
    }

    fn by() -> Requester {
        Requester::named("model", Interface::Cli)
    }

    async fn step(&mut self, step: u64, op: &Op) {
        let now = self.clock.now();
        match *op {
            Op::Add { key, ttl } => {
                let cidr = cidr_of(key);
                let ttl = Ttl::parse(TTLS[ttl]).unwrap();
                let request = AddRequest {
                    cidr: Cidr::parse(&cidr).unwrap(),
                    environment: dev(),
                    ttl: Some(ttl),
                    description: Description::parse("").unwrap(),
                    source: Source::Manual,
                    by: Run::by(),
                };
                let live = self.model.get(&cidr).filter(|m| m.expires_at > now).cloned();
                match self.engine().grants().add(request).await {
                    Ok(outcome) => {
                        let expected = (now + ttl.duration()).max(live.as_ref().map_or(now, |m| m.expires_at));
                        if outcome.grant.expires_at != Some(expected) {
                            self.violations.push(format!(
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
                        if clean == Some(false) {
                            self.doubt.insert(cidr.clone(), now);
                        } else if clean == Some(true) {
                            self.doubt.remove(&cidr);
                        }
                        if live.is_none()
                            && let Some(old) = self.model.get(&cidr)
                        {
                            self.expiries.push(Expiry { cidr: cidr.clone(), at: old.expires_at, until: Some(now) });
                        }
                        self.model.insert(cidr, Modelled { expires_at: expected, acknowledged });
                    }
                    Err(err) => self.violations.push(format!("step {step}: add {cidr} failed: {err}")),
                }
            }
            Op::Remove { key } => {
                let cidr = cidr_of(key);
                let grant = GrantKey { cidr: Cidr::parse(&cidr).unwrap(), environment: dev() };
                let live = self.model.get(&cidr).is_some_and(|m| m.expires_at > now);
                match self.engine().grants().remove(&grant, &Run::by()).await {
                    Ok(outcome) if !outcome.report.failed() => {
                        self.doubt.remove(&cidr);
                        for region in REGIONS {
                            if ours(&self.memory, region).contains(&cidr) {
                                self.violations.push(format!("step {step}: a clean remove of {cidr} left its rule in {region}"));
                            }
                        }
                    }
                    Ok(_) => {
                        self.doubt.insert(cidr.clone(), now);
                    }
                    Err(err) if live => self.violations.push(format!("step {step}: remove of live {cidr} failed: {err}")),
                    // Gone already, or expired and swept meanwhile.
                    Err(_) => {}
                }
                if let Some(old) = self.model.remove(&cidr)
                    && !live
                {
                    self.expiries.push(Expiry { cidr, at: old.expires_at, until: Some(now) });
                }
            }
            Op::Wait { secs } => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
            Op::Restart => {
                self.running.take().expect("running").kill();
                self.running = Some(start(&self.path, self.firewall.clone(), self.clock.clone()));
            }
            Op::Faults(on) => {
                self.firewall.set_rate(if on { FAULT_RATE } else { 0.0 });
                self.calm_since = match (on, self.calm_since) {
                    (true, _) => None,
                    (false, Some(since)) => Some(since),
                    (false, None) => Some(now),
                };
            }
        }
        *self.counts.entry(op.name()).or_default() += 1;
        self.check(step, op.name()).await;
    }

    /// Whether `since` is long enough ago, with no fault since, for `within` to have passed.
    fn calm_for(&self, since: Timestamp, within: Duration) -> bool {
        let now = self.clock.now();
        self.calm_since.is_some_and(|calm| now >= calm.max(since) + within)
    }

    /// The invariants, after every step.
    async fn check(&mut self, step: u64, op: &str) {
        let now = self.clock.now();
        let overdue: BTreeSet<String> =
            self.engine().status(&Run::by()).await.unwrap().overdue.into_iter().map(|g| g.cidr.to_string()).collect();
        let mut found = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            if theirs(&self.memory, region) != self.before[i] {
                found.push(format!("step {step} ({op}): a rule without our marker changed in {region}"));
            }
            let present = ours(&self.memory, region);
            for (cidr, m) in &self.model {
                let repaired = self.doubt.get(cidr).is_none_or(|at| self.calm_for(*at, REPAIR_MAX));
                if m.expires_at > now && !present.contains(cidr) && (m.acknowledged || repaired) {
                    found.push(format!("step {step} ({op}): live {cidr} missing from {region}"));
                }
                // Recorded as expired (no longer stored) only once its rule is gone.
                if m.expires_at <= now && !overdue.contains(cidr) && present.contains(cidr) {
                    found.push(format!("step {step} ({op}): {cidr} recorded expired but still open in {region}"));
                }
            }
            for cidr in &present {
                let doubted = self.doubt.get(cidr).is_some_and(|at| !self.calm_for(*at, REPAIR_MAX));
                match self.model.get(cidr) {
                    Some(m) if m.expires_at > now => {}
                    Some(m) if self.calm_for(m.expires_at, EXPIRY_MAX) && !doubted => found.push(format!(
                        "step {step} ({op}): {cidr} expired at {} and is still open in {region} at {now}, faults off",
                        m.expires_at
                    )),
                    Some(_) => {}
                    None if doubted => {}
                    None => found.push(format!("step {step} ({op}): {cidr} is open in {region}, but no grant wants it")),
                }
            }
        }
        self.violations.extend(found);
    }

    /// Faults stop; the engine's own loops get a fault-free stretch; then the world must
    /// equal the model, with no reconcile run by the test first.
    async fn finish(mut self) -> (Vec<String>, Vec<Option<Duration>>, u64, BTreeMap<&'static str, u64>) {
        self.firewall.set_rate(0.0);
        self.calm_since = Some(self.calm_since.unwrap_or(self.clock.now()));
        tokio::time::sleep((REPAIR_MAX + Duration::seconds(1)).try_into().unwrap()).await;
        let now = self.clock.now();
        for (cidr, m) in &self.model {
            if m.expires_at <= now {
                self.expiries.push(Expiry { cidr: cidr.clone(), at: m.expires_at, until: None });
            }
        }
        let live: BTreeSet<String> = self.model.iter().filter(|(_, m)| m.expires_at > now).map(|(c, _)| c.clone()).collect();
        for (i, region) in REGIONS.iter().enumerate() {
            let present = ours(&self.memory, region);
            if present != live {
                self.violations.push(format!(
                    "after the run, {region} holds {:?} more and {:?} fewer than the model",
                    present.difference(&live).collect::<Vec<_>>(),
                    live.difference(&present).collect::<Vec<_>>()
                ));
            }
            if theirs(&self.memory, region) != self.before[i] {
                self.violations.push(format!("after the run, a rule without our marker changed in {region}"));
            }
        }
        let engine = self.engine().clone();
        let stored: BTreeSet<String> = engine
            .grants()
            .live_grants(&portcullis_engine::Scope::All, &Run::by())
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.cidr.to_string())
            .collect();
        if stored != live {
            self.violations.push(format!("after the run the store holds {stored:?}, the model {live:?}"));
        }
        let overdue = engine.status(&Run::by()).await.unwrap().overdue;
        if !overdue.is_empty() {
            self.violations.push(format!("after the run, expired grants are still stored: {overdue:?}"));
        }
        let latencies = expiry_latencies(&self.memory, &self.expiries, now);
        let injected: u64 = self.firewall.injected().values().sum();
        self.running.take().expect("running").kill();
        (self.violations, latencies, injected, self.counts)
    }
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

/// Runs `ops` from `seed`; every violation seen (empty when the engine agreed with the model).
async fn run(seed: u64, ops: impl IntoIterator<Item = Op>, limit: usize) -> (Vec<String>, Vec<Option<Duration>>, u64, String) {
    let mut run = Run::new(seed);
    let mut n = 0;
    for (step, op) in ops.into_iter().enumerate() {
        run.step(step as u64, &op).await;
        n += 1;
        if run.violations.len() > limit {
            break;
        }
    }
    let (mut violations, latencies, injected, counts) = run.finish().await;
    let never = latencies.iter().filter(|l| l.is_none()).count();
    if never > 0 {
        violations.push(format!("{never} expired rules outlived their grant until the key's next grant or the end"));
    }
    (violations, latencies, injected, format!("{n} operations {counts:?}"))
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 400, ..ProptestConfig::default() })]

    /// Short random sequences: a failure shrinks to the few steps that cause it.
    #[test]
    fn short_sequences_agree_with_the_model(seed in any::<u64>(), ops in prop::collection::vec(op_strategy(), 1..40)) {
        let (violations, _, _, _) = paused_runtime().block_on(run(seed, ops, 0));
        prop_assert!(violations.is_empty(), "{violations:#?}");
    }
}

#[tokio::test(start_paused = true)]
async fn random_operations_with_faults_agree_with_the_model() {
    let ops = env_number("PORTCULLIS_MODEL_OPS", 1_000);
    let seed = env_number("PORTCULLIS_MODEL_SEED", 0x5eed_0016);
    let mut rng = Rng(seed);
    let sequence = (0..ops).map(move |_| op_from(&mut rng));
    let (violations, measured, injected, summary) = run(seed, sequence, 20).await;
    let mut latencies: Vec<Duration> = measured.into_iter().flatten().collect();
    latencies.sort();
    let p99 = latencies.get(latencies.len().saturating_sub(1) * 99 / 100).copied();
    println!(
        "model: {summary}, {injected} faults injected, {} expiries measured, p99 expiry latency {p99:?}, max {:?}, {} violations",
        latencies.len(),
        latencies.last(),
        violations.len()
    );
    assert!(violations.is_empty(), "{} violations, first: {:#?}", violations.len(), &violations[..violations.len().min(10)]);
    assert!(injected > 0, "the run injected no faults");
}
