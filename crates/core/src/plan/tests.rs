use super::*;
use crate::{Description, Owner, PortSet, Protocol, Source};
use proptest::prelude::*;
use time::macros::datetime;

const NOW: Timestamp = datetime!(2026-01-01 12:00 UTC);

fn env(s: &str) -> Environment {
    Environment::parse(s).unwrap()
}

fn grant(cidr: &str, e: &str, desc: &str, expires_in_min: Option<i64>) -> Grant {
    Grant {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: env(e),
        owner: Owner::named("john.doe"),
        source: Source::Manual,
        description: Description::parse(desc).unwrap(),
        created_at: NOW - time::Duration::hours(1),
        expires_at: expires_in_min.map(|m| NOW + time::Duration::minutes(m)),
    }
}

fn rule(cidr: &str, port: u16, desc: Option<&str>) -> ObservedRule {
    ObservedRule {
        cidr: Cidr::parse(cidr).unwrap(),
        raw_cidr: cidr.to_string(),
        ports: PortRange::single(Protocol::Tcp, port),
        description: desc.map(str::to_string),
    }
}

fn target(id: &str, e: &str, ports: PortSet, rules: Vec<ObservedRule>) -> Target {
    let mut counts = FamilyCounts::default();
    for r in &rules {
        counts.add(r.cidr.family(), 1);
    }
    Target {
        id: TargetId { region: "us-east-1".into(), group_id: id.into() },
        route: Route::region("us-east-1"),
        name: id.into(),
        environment: env(e),
        ports,
        rules,
        counts,
        list: None,
    }
}

/// Both planners: the examples below hold each to the same stated answers, so the reference
/// planner the properties compare against is itself checked, not only assumed right.
const PLANNERS: [fn(&PlanInput<'_>) -> Plan; 2] = [plan, super::reference::reference_plan];

fn run_by(planner: fn(&PlanInput<'_>) -> Plan, grants: &[Grant], targets: &[Target], history: &[&str]) -> Plan {
    let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
    planner(&PlanInput {
        grants,
        targets,
        marker: &Marker::default(),
        environments_with_history: &history,
        quota: RuleQuota::default(),
        now: NOW,
    })
}

#[test]
fn adoption_takes_over_only_markerless_rules_matching_a_live_grant() {
    let grants = [grant("1.2.3.4/32", "dev", "Home office", Some(60)), grant("5.6.7.8/32", "dev", "", Some(-1))];
    let rules = vec![
        rule("1.2.3.4/32", 80, None),                      // the IP Whitelist Manager Lambda's rule: adopted
        rule("1.2.3.4/32", 443, Some("made by hand")),     // matches too: adopted
        rule("1.2.3.4/32", 22, None),                      // port not managed: left
        rule("9.9.9.9/32", 80, None),                      // no grant: left
        rule("5.6.7.8/32", 80, None),                      // grant expired: left
        rule("1.2.3.4/32", 7233, Some("pc:prod someone")), // another environment's: left
    ];
    let targets = [target("sg-1", "dev", PortSet::parse("tcp:80,tcp:443,tcp:7233").unwrap(), rules)];
    let history = BTreeSet::new();
    let input = PlanInput {
        grants: &grants,
        targets: &targets,
        marker: &Marker::default(),
        environments_with_history: &history,
        quota: RuleQuota::default(),
        now: NOW,
    };
    let changes = plan_adoption(&input);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert!(c.authorize.is_empty() && c.revoke.is_empty());
    let updated: Vec<_> =
        c.update_descriptions.iter().map(|r| (r.ec2_cidr.as_str(), r.ports.from, r.description.as_str())).collect();
    assert_eq!(
        updated,
        [("1.2.3.4/32", 80, "pc:dev john.doe: Home office"), ("1.2.3.4/32", 443, "pc:dev john.doe: Home office")]
    );
    // Once adopted, the rules are ours and nothing more is proposed.
    let mut adopted = targets.clone();
    for (r, u) in adopted[0].rules.iter_mut().zip(&c.update_descriptions) {
        r.description = Some(u.description.clone());
    }
    assert!(plan_adoption(&PlanInput { targets: &adopted, ..input }).is_empty());
}

#[test]
fn authorizes_every_port_and_leaves_hand_made_rules() {
    for planner in PLANNERS {
        let run = |g: &[Grant], t: &[Target], h: &[&str]| run_by(planner, g, t, h);
        let grants = [grant("198.51.100.7", "dev", "Home office", Some(60))];
        let hand = rule("192.0.2.1/32", 80, Some("office VPN"));
        let targets = [target("sg-1", "dev", PortSet::alb(), vec![hand.clone()])];
        let p = run(&grants, &targets, &["dev"]);
        assert_eq!(p.changes.len(), 1);
        let c = &p.changes[0];
        let auth: Vec<_> = c.authorize.iter().map(|r| (r.ec2_cidr.as_str(), r.ports.from, r.description.as_str())).collect();
        assert_eq!(
            auth,
            [("198.51.100.7/32", 80, "pc:dev john.doe: Home office"), ("198.51.100.7/32", 443, "pc:dev john.doe: Home office")]
        );
        assert!(c.revoke.is_empty());
        assert_eq!(p.foreign.len(), 1);
    }
}

#[test]
fn expired_and_orphaned_owned_rules_go_foreign_stay() {
    for planner in PLANNERS {
        let run = |g: &[Grant], t: &[Target], h: &[&str]| run_by(planner, g, t, h);
        let grants = [grant("198.51.100.7", "dev", "x", Some(0))];
        let targets = [target(
            "sg-1",
            "dev",
            PortSet::nlb(),
            vec![
                rule("198.51.100.7/32", 7233, Some("pc:dev john.doe: x")),
                rule("203.0.113.9/32", 7233, Some("pc:dev someone")),
                rule("203.0.113.10/32", 7233, Some("2020-01-01")),
                rule("203.0.113.11/32", 7233, Some("pc:prod other env")),
            ],
        )];
        let p = run(&grants, &targets, &["dev"]);
        let revoked: Vec<_> = p.changes[0].revoke.iter().map(|r| r.ec2_cidr.as_str()).collect();
        assert_eq!(revoked, ["198.51.100.7/32", "203.0.113.9/32"]);
        assert_eq!(p.foreign.len(), 2);
        // Without history for dev, nothing is revoked: it is withheld and reported.
        let p = run(&grants, &targets, &[]);
        assert!(p.changes.is_empty());
        assert_eq!(p.withheld.len(), 2);
    }
}

#[test]
fn description_change_updates_in_place_and_identical_is_free() {
    for planner in PLANNERS {
        let run = |g: &[Grant], t: &[Target], h: &[&str]| run_by(planner, g, t, h);
        let targets = [target("sg-1", "dev", PortSet::nlb(), vec![rule("198.51.100.7/32", 7233, Some("pc:dev john.doe: old"))])];
        let p = run(&[grant("198.51.100.7", "dev", "old", Some(5))], &targets, &["dev"]);
        assert!(p.is_empty());
        assert_eq!(p.unchanged, 1);
        let p = run(&[grant("198.51.100.7", "dev", "new", Some(5))], &targets, &["dev"]);
        assert_eq!(p.update_count(), 1);
        assert_eq!(p.changes[0].update_descriptions[0].description, "pc:dev john.doe: new");
    }
}

#[test]
fn quota_drops_the_overflowing_family() {
    for planner in PLANNERS {
        let run = |g: &[Grant], t: &[Target], h: &[&str]| run_by(planner, g, t, h);
        let rules: Vec<_> = (0..59).map(|i| rule(&format!("192.0.2.{i}/32"), 80, Some("hand"))).collect();
        let targets = [target("sg-1", "dev", PortSet::alb(), rules)];
        let p = run(&[grant("198.51.100.7", "dev", "", Some(5)), grant("2001:db8::1", "dev", "", Some(5))], &targets, &["dev"]);
        assert_eq!(p.overflows.len(), 1);
        assert_eq!(p.overflows[0].would_hold, 61);
        assert_eq!(p.overflows[0].family, Family::Ipv4);
        assert!(p.changes[0].authorize.iter().all(|r| r.cidr.family() == Family::Ipv6));
    }
}

/// Applies a plan as a firewall would.
fn apply(targets: &mut [Target], p: &Plan) {
    for change in &p.changes {
        let t = targets.iter_mut().find(|t| t.id == change.target).unwrap();
        for r in &change.revoke {
            let before = t.rules.len();
            t.rules.retain(|o| !(o.raw_cidr == r.ec2_cidr && o.ports == r.ports));
            assert_eq!(before - 1, t.rules.len(), "revoke of a rule that is not there");
        }
        for r in &change.update_descriptions {
            let o = t.rules.iter_mut().find(|o| o.raw_cidr == r.ec2_cidr && o.ports == r.ports).unwrap();
            o.description = Some(r.description.clone());
        }
        for r in &change.authorize {
            assert!(!t.rules.iter().any(|o| o.cidr == r.cidr && o.ports == r.ports), "duplicate authorize");
            t.rules.push(ObservedRule {
                cidr: r.cidr,
                raw_cidr: r.ec2_cidr.clone(),
                ports: r.ports,
                description: Some(r.description.clone()),
            });
        }
        t.counts = counts_after(t.counts, change);
    }
}

fn arb_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..6).prop_map(|i| format!("203.0.113.{i}/32")),
        Just("203.0.113.0/24".to_string()),
        Just("203.0.113.1/24".to_string()),
        (0u8..3).prop_map(|i| format!("2001:db8::{i}/128")),
    ]
}

fn arb_description() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("hand made".to_string())),
        Just(Some("2020-01-01".to_string())),
        Just(Some("pc:dev john.doe: a".to_string())),
        Just(Some("pc:dev john.doe: b".to_string())),
        Just(Some("pc:prod john.doe: a".to_string())),
        Just(Some("pc:dev".to_string())),
    ]
}

fn arb_world() -> impl Strategy<Value = (Vec<Grant>, Vec<Target>, Vec<&'static str>, RuleQuota)> {
    let grants = proptest::collection::vec(
        (arb_cidr(), prop_oneof![Just("dev"), Just("prod")], prop_oneof![Just("a"), Just("b")], proptest::option::of(-5i64..5)),
        0..8,
    )
    .prop_map(|gs| {
        let mut seen = BTreeSet::new();
        gs.into_iter().map(|(c, e, d, x)| grant(&c, e, d, x)).filter(|g| seen.insert(g.key())).collect::<Vec<_>>()
    });
    let ports = prop_oneof![Just(PortSet::alb()), Just(PortSet::nlb()), Just(PortSet::parse("tcp:80").unwrap())];
    let targets = proptest::collection::vec(
        (
            prop_oneof![Just("dev"), Just("prod")],
            ports,
            proptest::collection::vec((arb_cidr(), prop_oneof![Just(80u16), Just(443), Just(7233)], arb_description()), 0..10),
        ),
        1..4,
    )
    .prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, (e, p, rules))| {
                let mut seen = BTreeSet::new();
                let rules = rules
                    .into_iter()
                    .filter(|(c, port, _)| seen.insert((c.clone(), *port)))
                    .map(|(c, port, d)| rule(&c, port, d.as_deref()))
                    .collect();
                target(&format!("sg-{i}"), e, p, rules)
            })
            .collect::<Vec<_>>()
    });
    let history = prop_oneof![Just(vec![]), Just(vec!["dev"]), Just(vec!["dev", "prod"])];
    let quota = (3usize..70, 3usize..70).prop_map(|(ipv4, ipv6)| RuleQuota { ipv4, ipv6 });
    (grants, targets, history, quota)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_after_apply_is_empty((grants, mut targets, history, quota) in arb_world()) {
        let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
        let input = |targets: &[Target]| plan(&PlanInput {
            grants: &grants, targets, marker: &Marker::default(),
            environments_with_history: &history, quota, now: NOW,
        });
        let first = input(&targets);
        apply(&mut targets, &first);
        let second = input(&targets);
        prop_assert!(second.changes.is_empty(), "second plan: {:?}", second.changes);
    }

    /// What a plan is for, stated whole: once it is applied, every live grant is on every
    /// managed port of every target of its environment that takes its family (or its family's
    /// overflow is reported), and no rule of ours remains that no live grant backs (unless
    /// withheld for want of history). A planner that does nothing fails this.
    #[test]
    fn an_applied_plan_converges((grants, mut targets, history, quota) in arb_world()) {
        let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
        let marker = Marker::default();
        let p = plan(&PlanInput {
            grants: &grants, targets: &targets, marker: &marker,
            environments_with_history: &history, quota, now: NOW,
        });
        apply(&mut targets, &p);
        for t in &targets {
            let live = || grants.iter().filter(|g| g.environment == t.environment && g.is_live(NOW));
            for g in live().filter(|g| t.takes(g.cidr.family())) {
                let overflowed = p.overflows.iter().any(|o| o.target == t.id && o.family == g.cidr.family());
                for port in t.ports.iter() {
                    let on = t.rules.iter().any(|o| o.cidr == g.cidr && o.ports == *port);
                    prop_assert!(on || overflowed, "{} is not on {}:{:?} and no overflow says why", g.cidr, t.id.group_id, port);
                }
            }
            for o in &t.rules {
                if o.description.as_deref().and_then(|d| marker.decode(d)) != Some(t.environment.clone()) {
                    continue;
                }
                let backed = live().any(|g| g.cidr == o.cidr && t.ports.iter().any(|p| *p == o.ports));
                let withheld = p.withheld.iter().any(|w| w.target == t.id && w.rule.ec2_cidr == o.raw_cidr && w.rule.ports == o.ports);
                prop_assert!(backed || withheld, "our rule {} {:?} on {} outlived its grant", o.raw_cidr, o.ports, t.id.group_id);
            }
        }
    }

    #[test]
    fn the_fast_planner_decides_exactly_what_the_reference_planner_does(
        (grants, mut targets, history, quota) in arb_world(),
        others in proptest::collection::vec((0usize..40, 0usize..40), 4),
    ) {
        // Groups also hold rules the planner does not read (other protocols, group sources).
        for (t, (v4, v6)) in targets.iter_mut().zip(others) {
            t.counts.ipv4 += v4;
            t.counts.ipv6 += v6;
        }
        let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
        let input = PlanInput {
            grants: &grants, targets: &targets, marker: &Marker::default(),
            environments_with_history: &history, quota, now: NOW,
        };
        prop_assert_eq!(plan(&input), super::reference::reference_plan(&input));
    }

    #[test]
    fn an_additions_plan_touches_only_the_added_addresses_and_settles(
        (grants, mut targets, history, quota) in arb_world(),
        taken in 0usize..3,
    ) {
        let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
        let added: Vec<Grant> = grants.into_iter().take(taken).collect();
        let input = |targets: &[Target]| plan_additions(&PlanInput {
            grants: &added, targets, marker: &Marker::default(),
            environments_with_history: &history, quota, now: NOW,
        });
        let first = input(&targets);
        for change in &first.changes {
            for r in change.authorize.iter().chain(&change.revoke).chain(&change.update_descriptions) {
                prop_assert!(added.iter().any(|g| g.cidr == r.cidr), "{:?} is not an added address", r);
            }
        }
        apply(&mut targets, &first);
        let second = input(&targets);
        prop_assert!(second.changes.is_empty(), "second plan: {:?}", second.changes);
    }

    #[test]
    fn never_touches_a_rule_without_our_marker((grants, targets, history, quota) in arb_world()) {
        let history: BTreeSet<Environment> = history.iter().map(|e| env(e)).collect();
        let marker = Marker::default();
        let p = plan(&PlanInput {
            grants: &grants, targets: &targets, marker: &marker,
            environments_with_history: &history, quota, now: NOW,
        });
        for change in &p.changes {
            let t = targets.iter().find(|t| t.id == change.target).unwrap();
            for r in change.revoke.iter().chain(&change.update_descriptions) {
                let observed = t.rules.iter().find(|o| o.raw_cidr == r.ec2_cidr && o.ports == r.ports).unwrap();
                let owner = observed.description.as_deref().and_then(|d| marker.decode(d));
                prop_assert_eq!(owner.as_ref(), Some(&t.environment));
            }
            for r in &change.authorize {
                let prefix = format!("pc:{} ", t.environment);
                prop_assert!(r.description.starts_with(&prefix));
            }
        }
    }
}
