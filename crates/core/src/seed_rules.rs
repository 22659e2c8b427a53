//! Rules the authenticating security group tool (`POST|DELETE /connection`) made: it wrote
//! `expired at <ISO time>` into each rule's description and revoked by that time. `adopt` takes
//! them over as grants that expire at that time, so switching its cleanup off leaves none open
//! for ever.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    AppliedRule, Description, Environment, Grant, GroupChange, Owner, PlanInput, Policy, RefusedGrant, Source, Timestamp,
};

/// The owner of grants adopted from the authenticating security group tool's rules.
pub const ADOPTED_OWNER: &str = "adopted";

/// The expiry the tool wrote into a rule's description: exactly `expired at ` and an ISO 8601
/// time with a `+HHMM` (or `+HH:MM`) offset and optional fractions of a second, as Python's
/// `isoformat`/`strftime('%z')` write it, e.g. `expired at 2026-12-08T10:00:00.123456+0000`.
pub fn seed_expiry(description: &str) -> Option<Timestamp> {
    let text = description.strip_prefix("expired at ")?;
    // `+HHMM`, or `+HH:MM`: the last five or six characters.
    let colon = text.len() >= 6 && text.as_bytes()[text.len() - 3] == b':';
    let cut = text.len().checked_sub(if colon { 6 } else { 5 })?;
    let (date_time, offset) = (text.get(..cut)?, text.get(cut..)?.replace(':', ""));
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = offset.get(1..)?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let minutes = sign * (digits[..2].parse::<i64>().ok()? * 60 + digits[2..].parse::<i64>().ok()?);
    let format =
        time::macros::format_description!(version = 2, "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
    let local = time::PrimitiveDateTime::parse(date_time, &format).ok()?;
    Some(local.assume_utc() - time::Duration::minutes(minutes))
}

/// What `adopt` does with the tool's rules: a grant per address and environment, expiring at
/// the time its rule says (owned by [`ADOPTED_OWNER`]), and the description update that puts
/// our marker on each such rule. Only a group's rule without any marker, on a managed port,
/// whose description is exactly the tool's, and whose address has no grant yet; a list's
/// entries are never re-described (see `StaleDescription`). One already past its time becomes a
/// grant that has expired, which the next sweep revokes and records.
///
/// The time is text anyone who edits the group could have written, so it is held to the
/// environment's policy as any grant is (`Policy::admits`: an expiry past `max_ttl`, say): a
/// refused one is neither stored nor marked, and is returned with the reason.
pub fn plan_seed_grants(
    input: &PlanInput<'_>,
    policies: &BTreeMap<Environment, Policy>,
) -> (Vec<Grant>, Vec<GroupChange>, Vec<RefusedGrant>) {
    let mut grants: Vec<Grant> = Vec::new();
    let mut refused: Vec<RefusedGrant> = Vec::new();
    let mut taken: BTreeSet<(crate::Cidr, crate::Environment)> =
        input.grants.iter().map(|g| (g.cidr, g.environment.clone())).collect();
    let mut changes = Vec::new();
    let description = Description::parse("").expect("empty is a description");
    for target in input.targets.iter().filter(|t| t.list.is_none()) {
        let env = &target.environment;
        let mut change = GroupChange::none(target, env);
        for rule in &target.rules {
            let Some(expires_at) = rule.description.as_deref().filter(|d| !input.marker.is_ours(d)).and_then(seed_expiry) else {
                continue;
            };
            if !target.ports.iter().any(|p| *p == rule.ports) {
                continue;
            }
            let new = taken.insert((rule.cidr, env.clone()));
            let ours = grants.iter().any(|g| g.cidr == rule.cidr && &g.environment == env);
            if !new && !ours {
                continue; // the address already has a grant (`plan_adoption`'s), or was refused
            }
            if new {
                let grant = Grant {
                    cidr: rule.cidr,
                    environment: env.clone(),
                    owner: Owner::named(ADOPTED_OWNER),
                    source: Source::Manual,
                    description: description.clone(),
                    created_at: input.now,
                    expires_at: Some(expires_at),
                };
                if let Some(Err(err)) = policies.get(env).map(|p| p.admits(&grant, input.now)) {
                    refused.push(RefusedGrant { reason: err.to_string(), grant });
                    continue;
                }
                grants.push(grant);
            }
            change.update_descriptions.push(AppliedRule {
                cidr: rule.cidr,
                ec2_cidr: rule.raw_cidr.clone(),
                ports: rule.ports,
                description: input.marker.encode(env, ADOPTED_OWNER, &description),
            });
        }
        if !change.is_empty() {
            changes.push(change);
        }
    }
    (grants, changes, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_tools_expiry_is_read_in_its_own_formats_and_nothing_else() {
        let at = |d: &str| seed_expiry(d);
        assert_eq!(at("expired at 2026-12-08T10:00:00.123456+0000"), Some(datetime!(2026-12-08 10:00:00.123456 UTC)));
        assert_eq!(at("expired at 2026-12-08T10:00:00+0000"), Some(datetime!(2026-12-08 10:00:00 UTC)));
        assert_eq!(at("expired at 2026-12-08T12:00:00+0200"), Some(datetime!(2026-12-08 10:00:00 UTC)));
        assert_eq!(at("expired at 2026-12-08T05:30:00-04:30"), Some(datetime!(2026-12-08 10:00:00 UTC)));
        for not_the_tools in [
            "expired at 2026-12-08T10:00:00",
            "expired at 2026-12-08 10:00:00+0000",
            "expired at tomorrow",
            "Expired at 2026-12-08T10:00:00+0000",
            " expired at 2026-12-08T10:00:00+0000",
            "expired at 2026-12-08T10:00:00+0000 (laptop)",
            "expired at 2026-13-08T10:00:00+0000",
            "",
        ] {
            assert_eq!(at(not_the_tools), None, "{not_the_tools:?}");
        }
    }
}
