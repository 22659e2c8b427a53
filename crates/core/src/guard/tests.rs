use time::macros::datetime;

use super::*;

const NOW: Timestamp = datetime!(2026-12-03 12:00 UTC);

fn tcp(port: i32, cidr: &str, description: Option<&str>) -> GuardRule {
    GuardRule::new("tcp", Some(port), Some(port), RuleSource::Ipv4(cidr.into()), description)
}

fn with_id(id: &str, rule: GuardRule) -> GroupRule {
    GroupRule { rule_id: Some(id.into()), rule }
}

fn marker() -> Marker {
    Marker::default()
}

#[test]
fn rules_have_one_spelling_and_read_in_words() {
    let all = GuardRule::new("-1", Some(-1), Some(-1), RuleSource::Group("sg-1".into()), Some(" "));
    assert_eq!((all.from_port, all.to_port, all.description.as_deref()), (None, None, None));
    assert_eq!(all.to_string(), "all traffic from group sg-1");
    assert_eq!(GuardRule::new("6", Some(22), Some(22), RuleSource::Ipv4("1.2.3.4/32".into()), None).protocol, "tcp");
    assert_eq!(tcp(22, "203.0.113.0/24", Some("temp ssh")).to_string(), "tcp 22 from 203.0.113.0/24 (\"temp ssh\")");
    let range = GuardRule::new("udp", Some(1000), Some(2000), RuleSource::PrefixList("pl-1".into()), None);
    assert_eq!(range.to_string(), "udp 1000-2000 from pl-1");
}

#[test]
fn an_addition_is_revoked_by_id_when_the_event_names_one_else_by_content() {
    let changes = Changes {
        added: vec![
            with_id("sgr-1", tcp(22, "203.0.113.0/24", None)),
            GroupRule { rule_id: None, rule: tcp(80, "0.0.0.0/0", None) },
        ],
        ..Changes::default()
    };
    let r = revert(&changes, None, &marker(), &Backing::default());
    assert_eq!(r.revoke_ids, ["sgr-1"]);
    assert_eq!(r.revoke, [tcp(80, "0.0.0.0/0", None)]);
    assert_eq!(r.add.len(), 2);
    assert!(r.authorize.is_empty() && r.remove.is_empty() && r.notes.is_empty());
}

#[test]
fn a_removal_is_restored_with_the_baseline_s_description() {
    let baseline = [with_id("sgr-9", tcp(443, "198.51.100.0/24", Some("office")))];
    let changes = Changes { removed: vec![tcp(443, "198.51.100.0/24", None)], ..Changes::default() };
    let r = revert(&changes, Some(&baseline), &marker(), &Backing::default());
    assert_eq!(r.authorize, [tcp(443, "198.51.100.0/24", Some("office"))]);
    assert_eq!(r.remove, r.authorize);
    let by_id = Changes { removed_ids: vec!["sgr-9".into(), "sgr-unknown".into()], ..Changes::default() };
    let r = revert(&by_id, Some(&baseline), &marker(), &Backing::default());
    assert_eq!(r.authorize, [tcp(443, "198.51.100.0/24", Some("office"))]);
    assert!(r.notes[0].contains("sgr-unknown"), "{:?}", r.notes);
}

#[test]
fn an_edit_is_restored_from_the_baseline_or_revoked_when_unknown() {
    let before = tcp(443, "198.51.100.0/24", Some("office"));
    let after = tcp(443, "0.0.0.0/0", Some("open to all"));
    let changes = Changes { edits: vec![with_id("sgr-9", after.clone())], ..Changes::default() };
    let r = revert(&changes, Some(&[with_id("sgr-9", before.clone())]), &marker(), &Backing::default());
    assert_eq!(r.restore, [("sgr-9".to_string(), before.clone())]);
    assert_eq!((r.remove.clone(), r.add.clone()), (vec![before], vec![after.clone()]));
    let r = revert(&changes, None, &marker(), &Backing::default());
    assert_eq!(r.revoke_ids, ["sgr-9"]);
    assert!(r.restore.is_empty());
    assert!(r.notes[0].contains("fail closed"), "{:?}", r.notes);
}

fn backed(rules: &[&GuardRule]) -> Backing {
    let mut b = Backing::default();
    rules.iter().for_each(|r| b.insert(r));
    b
}

#[test]
fn rules_the_store_backs_are_left_to_the_reconcile_and_marked_removals_too() {
    let ours = tcp(443, "192.0.2.1/32", Some("pc:prod alice: laptop"));
    let changes = Changes { added: vec![with_id("sgr-1", ours.clone())], removed: vec![ours.clone()], ..Changes::default() };
    let backing = backed(&[&ours]);
    assert!(changes.only_ours(&marker(), &backing));
    assert!(revert(&changes, None, &marker(), &backing).is_empty());
    let by_id = Changes { removed_ids: vec!["sgr-1".into()], ..Changes::default() };
    assert!(!by_id.only_ours(&marker(), &backing), "content unknown: guard looks at it");
}

#[test]
fn a_marker_nothing_backs_is_an_out_of_band_change_and_the_request_names_its_claim() {
    let baseline = [with_id("sgr-db", tcp(5432, "10.20.0.0/16", Some("db")))];
    for description in [
        "pc:dev evil: looks like ours",
        "pc:zzz",
        "pc:prod",
        "pc:grant/r-0000000000000000 x: y",
        "pc:timed/r-0000000000000000 x: y",
        " pc:dev leading space",
    ] {
        let spoof = tcp(2222, "0.0.0.0/0", Some(description));
        let changes = Changes { added: vec![with_id("sgr-evil", spoof.clone())], ..Changes::default() };
        assert!(!changes.only_ours(&marker(), &Backing::default()), "{description:?}");
        let r = revert(&changes, Some(&baseline), &marker(), &Backing::default());
        assert_eq!(r.revoke_ids, ["sgr-evil"], "{description:?}");
        if spoof.carries_marker(&marker()) {
            assert!(r.notes.iter().any(|n| n.contains("claims to be") && n.contains(description.trim())), "{:?}", r.notes);
        }
        // The sweep sees it too, as an addition.
        let observed = [baseline[0].clone(), with_id("sgr-evil", spoof.clone())];
        assert_eq!(drift(&baseline, &observed, &marker(), &Backing::default()).added.len(), 1, "{description:?}");
    }
    // A baseline rule edited to the whole internet behind our marker is put back.
    let opened = with_id("sgr-db", tcp(5432, "0.0.0.0/0", Some("pc:dev ops: db")));
    let edit = Changes { edits: vec![opened.clone()], ..Changes::default() };
    let r = revert(&edit, Some(&baseline), &marker(), &Backing::default());
    assert_eq!(r.restore, [("sgr-db".to_string(), baseline[0].rule.clone())]);
    assert!(r.notes.iter().any(|n| n.contains("a grant's rule in dev")), "{:?}", r.notes);
    let d = drift(&baseline, std::slice::from_ref(&opened), &marker(), &Backing::default());
    assert_eq!(d.edits, [opened]);
}

#[test]
fn without_a_baseline_guard_closes_but_never_opens() {
    let rdp = tcp(3389, "0.0.0.0/0", None);
    let removal = Changes { removed: vec![rdp.clone()], removed_ids: vec!["sgr-2".into()], ..Changes::default() };
    let r = revert(&removal, None, &marker(), &Backing::default());
    assert!(r.authorize.is_empty() && r.restore.is_empty(), "{r:?}");
    assert_eq!(r.remove, std::slice::from_ref(&rdp), "the request still says what happened");
    assert!(r.notes.iter().all(|n| n.contains("no baseline")) && r.notes.len() == 2, "{:?}", r.notes);
    let addition = Changes { added: vec![with_id("sgr-3", rdp.clone())], ..Changes::default() };
    assert_eq!(revert(&addition, None, &marker(), &Backing::default()).revoke_ids, ["sgr-3"]);
}

#[test]
fn the_baseline_follows_a_restore_under_its_new_id() {
    let office = with_id("sgr-9", tcp(443, "198.51.100.0/24", Some("office")));
    let kept = with_id("sgr-1", tcp(22, "10.0.0.0/8", None));
    let restored = with_id("sgr-new", office.rule.clone());
    let after = renumber(&[kept.clone(), office.clone()], std::slice::from_ref(&restored)).unwrap();
    assert_eq!(after, [kept.clone(), restored.clone()]);
    assert_eq!(renumber(&after, &[restored]), None, "nothing changed");
    // The event's echo may lack the description the baseline remembers: matched by access.
    let bare = with_id("sgr-newer", tcp(443, "198.51.100.0/24", None));
    assert_eq!(renumber(&after, &[bare]).unwrap()[1].rule_id.as_deref(), Some("sgr-newer"));
}

#[test]
fn an_edit_that_changes_nothing_is_left_alone() {
    let rule = with_id("sgr-9", tcp(443, "198.51.100.0/24", Some("office")));
    let changes = Changes { edits: vec![rule.clone()], ..Changes::default() };
    let r = revert(&changes, Some(&[rule]), &marker(), &Backing::default());
    assert!(r.is_empty() && !r.has_steps(), "{r:?}");
    assert_eq!(r.unchanged_edits, ["sgr-9"]);
}

#[test]
fn the_ledger_knows_the_events_of_guard_s_own_steps() {
    let group = TargetId { region: "us-east-1".into(), group_id: "sg-1".into() };
    let baseline = [with_id("sgr-9", tcp(443, "198.51.100.0/24", Some("office")))];
    let changes = Changes {
        added: vec![with_id("sgr-1", tcp(22, "203.0.113.0/24", Some("x")))],
        removed: vec![tcp(443, "198.51.100.0/24", None)],
        edits: vec![with_id("sgr-9", tcp(443, "0.0.0.0/0", None))],
        ..Changes::default()
    };
    let steps = revert(&changes, Some(&baseline), &marker(), &Backing::default());
    let noted: BTreeSet<String> = step_keys(&group, &steps).into_iter().collect();
    // What guard's calls look like when they come back: a revoke by id, an authorize (the
    // new rule's id and echoed description), and the modify that put sgr-9 back.
    let echoed = Changes {
        removed_ids: vec!["sgr-1".into()],
        added: vec![with_id("sgr-new", tcp(443, "198.51.100.0/24", Some("office")))],
        edits: vec![baseline[0].clone()],
        ..Changes::default()
    };
    assert!(unnoted(&group, &echoed, &noted).is_empty(), "{:?}", unnoted(&group, &echoed, &noted));
    assert_eq!(change_keys(&group, &echoed).len(), 3);
    // Someone else's change on the same group is not guard's.
    let other = Changes { added: vec![with_id("sgr-7", tcp(22, "198.51.100.0/24", None))], ..Changes::default() };
    assert_eq!(unnoted(&group, &other, &noted), other);
    let elsewhere = TargetId { group_id: "sg-2".into(), ..group };
    assert_eq!(unnoted(&elsewhere, &echoed, &noted), echoed);
}

#[test]
fn backing_needs_a_live_grant_on_the_group_s_ports_or_a_live_timed_rule() {
    let now = NOW;
    let grant = crate::Grant {
        cidr: crate::Cidr::parse("203.0.113.7").unwrap(),
        environment: crate::Environment::parse("dev").unwrap(),
        owner: crate::Owner::named("alice"),
        source: crate::Source::Manual,
        description: crate::Description::default(),
        created_at: now,
        expires_at: Some(now + time::Duration::hours(1)),
    };
    let ports = crate::PortSet::alb();
    assert!(grant_backs(&tcp(443, "203.0.113.7/32", Some("pc:dev alice")), &grant, &ports, now));
    assert!(!grant_backs(&tcp(2222, "203.0.113.7/32", Some("pc:dev alice")), &grant, &ports, now), "another port");
    assert!(!grant_backs(&tcp(443, "203.0.113.0/24", Some("pc:dev alice")), &grant, &ports, now), "another address");
    assert!(!grant_backs(&tcp(443, "203.0.113.7/32", None), &grant, &ports, now + time::Duration::hours(2)), "expired");
    let mut r = request();
    r.status = RequestStatus::Approved;
    r.temporary = Some(Temporary { seconds: 3600, until: Some(now + time::Duration::hours(1)), ended_at: None });
    let ours = timed_rule(&r, &r.add[0], &marker());
    let group = r.group();
    assert!(timed_rule_backs(&ours, &r, &group, &marker(), now));
    assert!(!timed_rule_backs(&ours, &r, &group, &marker(), now + time::Duration::hours(1)), "ended");
    assert!(!timed_rule_backs(&tcp(22, "0.0.0.0/0", ours.description.as_deref()), &r, &group, &marker(), now));
    let elsewhere = TargetId { group_id: "sg-2".into(), ..group };
    assert!(!timed_rule_backs(&ours, &r, &elsewhere, &marker(), now));
}

#[test]
fn drift_finds_additions_removals_and_edits_against_the_baseline() {
    let kept = with_id("sgr-1", tcp(22, "10.0.0.0/8", None));
    let edited_before = with_id("sgr-2", tcp(443, "198.51.100.0/24", None));
    let edited_after = with_id("sgr-2", tcp(443, "0.0.0.0/0", None));
    let gone = with_id("sgr-3", tcp(80, "192.0.2.0/24", None));
    let new = with_id("sgr-4", tcp(3389, "0.0.0.0/0", None));
    let ours = with_id("sgr-5", tcp(443, "192.0.2.1/32", Some("pc:prod alice: x")));
    let baseline = [kept.clone(), edited_before, gone.clone()];
    let observed = [kept.clone(), edited_after.clone(), new.clone(), ours.clone()];
    let d = drift(&baseline, &observed, &marker(), &backed(&[&ours.rule]));
    assert_eq!(d.added, [new]);
    assert_eq!(d.removed, [gone.rule]);
    assert_eq!(d.edits, [edited_after]);
    let renumbered = [GroupRule { rule_id: Some("sgr-77".into()), rule: kept.rule.clone() }];
    assert!(drift(&[kept], &renumbered, &marker(), &Backing::default()).is_empty(), "the same rule under a new id is no change");
}

fn request() -> ChangeRequest {
    let group = GuardedGroup {
        id: TargetId { region: "us-east-1".into(), group_id: "sg-1".into() },
        account: "123456789012".into(),
        rules: vec![],
    };
    let mut r =
        ChangeRequest::pending("r1", "e1", "arn:aws:iam::123456789012:user/alice", &group, NOW, time::Duration::hours(24));
    r.add = vec![tcp(22, "203.0.113.0/24", None)];
    r
}

fn approvers(min: usize) -> Approvers {
    let alice = PrincipalPattern::parse("arn:aws:iam::123456789012:user/alice").unwrap();
    Approvers {
        users: ["UALICE", "UBOB", "UCAROL"].map(String::from).into(),
        groups: ["SSEC"].map(String::from).into(),
        min_approvals: min,
        people: [("UALICE".to_string(), vec![alice])].into(),
        max_term: time::Duration::hours(24),
        break_glass: None,
    }
}

fn who(name: &str) -> Decider {
    Decider { name: name.into(), groups: BTreeSet::new() }
}

#[test]
fn only_approvers_decide_and_never_on_their_own_change() {
    let r = request();
    assert_eq!(
        decide(&r, &who("UMALLORY"), &Verdict::Approve, &approvers(1), NOW),
        Err(Refusal::NotApprover { who: "UMALLORY".into() })
    );
    assert_eq!(
        decide(&r, &who("UALICE"), &Verdict::Approve, &approvers(1), NOW),
        Err(Refusal::OwnRequest { who: "UALICE".into() })
    );
    assert!(matches!(
        decide(&r, &who("UALICE"), &Verdict::Deny { reason: None }, &approvers(1), NOW),
        Err(Refusal::OwnRequest { .. })
    ));
    let in_group = Decider { name: "UDAVE".into(), groups: ["SSEC".to_string()].into() };
    let approved = decide(&r, &in_group, &Verdict::Approve, &approvers(1), NOW).unwrap();
    assert_eq!(
        (approved.status, approved.approvals.as_slice(), approved.version),
        (RequestStatus::Approved, &["UDAVE".to_string()][..], 1)
    );
    assert_eq!(
        decide(&approved, &who("UBOB"), &Verdict::Approve, &approvers(1), NOW),
        Err(Refusal::AlreadyDecided { id: "r1".into(), status: RequestStatus::Approved, by: vec!["UDAVE".into()] })
    );
}

#[test]
fn a_quorum_needs_distinct_approvers_and_a_deny_ends_it() {
    let r = request();
    let once = decide(&r, &who("UBOB"), &Verdict::Approve, &approvers(2), NOW).unwrap();
    assert_eq!(once.status, RequestStatus::Pending);
    assert!(matches!(decide(&once, &who("UBOB"), &Verdict::Approve, &approvers(2), NOW), Err(Refusal::AlreadyApproved { .. })));
    let twice = decide(&once, &who("UCAROL"), &Verdict::Approve, &approvers(2), NOW).unwrap();
    assert_eq!((twice.status, twice.approvals.len()), (RequestStatus::Approved, 2));
    let denied = decide(&once, &who("UCAROL"), &Verdict::Deny { reason: Some("no".into()) }, &approvers(2), NOW).unwrap();
    assert_eq!(
        (denied.status, denied.denied_by.as_deref(), denied.reason.as_deref()),
        (RequestStatus::Denied, Some("UCAROL"), Some("no"))
    );
}

#[test]
fn a_temporary_approval_takes_the_shortest_term_asked_and_starts_it_at_the_quorum() {
    let r = request();
    let hours = |h| Verdict::ApproveFor(time::Duration::hours(h));
    let once = decide(&r, &who("UBOB"), &hours(24), &approvers(2), NOW).unwrap();
    assert_eq!(once.temporary, Some(Temporary { seconds: 86_400, until: None, ended_at: None }));
    assert_eq!(once.timed_until(), None, "not approved yet: no timed rule");
    let later = NOW + time::Duration::minutes(5);
    let twice = decide(&once, &who("UCAROL"), &Verdict::Approve, &approvers(2), later).unwrap();
    assert_eq!(twice.timed_until(), Some(later + time::Duration::hours(24)), "a plain approval keeps the term asked");
    let shorter = decide(&once, &who("UCAROL"), &hours(2), &approvers(2), later).unwrap();
    assert_eq!(shorter.timed_until(), Some(later + time::Duration::hours(2)), "least privilege wins");
    assert!(shorter.timed_live(later) && !shorter.timed_live(later + time::Duration::hours(2)));
    let plain = decide(&r, &who("UBOB"), &Verdict::Approve, &approvers(1), NOW).unwrap();
    assert_eq!((plain.temporary, plain.timed_until()), (None, None));
}

#[test]
fn only_an_addition_can_be_approved_for_a_time() {
    let mut r = request();
    r.remove = vec![tcp(443, "0.0.0.0/0", None)];
    let refused = decide(&r, &who("UBOB"), &Verdict::ApproveFor(time::Duration::hours(1)), &approvers(1), NOW);
    assert_eq!(refused, Err(Refusal::NotAnAddition { id: "r1".into() }));
    assert!(decide(&r, &who("UBOB"), &Verdict::Approve, &approvers(1), NOW).is_ok(), "a plain approval still may");
}

#[test]
fn a_term_is_capped_at_temporary_approval() {
    let r = request();
    let year = decide(&r, &who("UBOB"), &Verdict::ApproveFor(time::Duration::days(365)), &approvers(1), NOW);
    assert_eq!(year, Err(Refusal::TermTooLong { asked: time::Duration::days(365), max: time::Duration::hours(24) }));
    assert!(decide(&r, &who("UBOB"), &Verdict::ApproveFor(time::Duration::hours(24)), &approvers(1), NOW).is_ok());
}

#[test]
fn only_the_requester_breaks_the_glass_when_it_is_on_for_an_addition_and_no_longer_than_allowed() {
    let r = request();
    let glass = |hours| Verdict::BreakGlass { reason: "outage".into(), term: time::Duration::hours(hours) };
    assert_eq!(decide(&r, &who("UALICE"), &glass(1), &approvers(1), NOW), Err(Refusal::BreakGlassOff));
    let on = Approvers { break_glass: Some(time::Duration::hours(4)), ..approvers(2) };
    assert_eq!(decide(&r, &who("UBOB"), &glass(1), &on, NOW), Err(Refusal::NotRequester { who: "UBOB".into() }));
    assert!(matches!(decide(&r, &who("UALICE"), &glass(5), &on, NOW), Err(Refusal::BreakGlassTooLong { .. })));
    let mut removal = request();
    removal.remove = vec![tcp(443, "0.0.0.0/0", None)];
    assert!(matches!(decide(&removal, &who("UALICE"), &glass(1), &on, NOW), Err(Refusal::NotAnAddition { .. })));
    let broken = decide(&r, &who("UALICE"), &glass(1), &on, NOW).unwrap();
    assert_eq!((broken.status, broken.break_glass.as_deref()), (RequestStatus::Approved, Some("outage")));
    assert_eq!(broken.timed_until(), Some(NOW + time::Duration::hours(1)), "a timed rule, at once, quorum or not");
    assert!(matches!(decide(&broken, &who("UBOB"), &Verdict::Approve, &on, NOW), Err(Refusal::AlreadyDecided { .. })));
}

#[test]
fn a_request_expires_undecided() {
    let r = request();
    assert_eq!(expire(&r, NOW), None);
    let late = r.expires_at;
    assert_eq!(decide(&r, &who("UBOB"), &Verdict::Approve, &approvers(1), late), Err(Refusal::Expired { id: "r1".into() }));
    let expired = expire(&r, late).unwrap();
    assert_eq!((expired.status, expired.version), (RequestStatus::Expired, 1));
    assert_eq!(expire(&expired, late), None);
}

#[test]
fn a_scope_narrows_to_one_group_and_a_list_that_does_not_name_it_needs_no_call() {
    let scope = |selection| GuardScope { route: Route::region("us-east-1"), selection };
    let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        scope(GroupSelection::Ids(ids(&["sg-1", "sg-2"]))).only("sg-2").unwrap().selection,
        GroupSelection::Ids(ids(&["sg-2"]))
    );
    assert_eq!(scope(GroupSelection::Ids(ids(&["sg-1"]))).only("sg-9"), None);
    assert_eq!(scope(GroupSelection::All).only("sg-9").unwrap().selection, GroupSelection::Ids(ids(&["sg-9"])));
    assert_eq!(scope(GroupSelection::Tagged).only("sg-9").unwrap().selection, GroupSelection::TaggedAmong(ids(&["sg-9"])));
}
