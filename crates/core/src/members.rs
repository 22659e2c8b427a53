//! Auto Scaling group members as grants (lifecycle hooks and true-ups, as the AWS Auto Scaling sync did): which addresses an ASG's instances admit,
//! and what a true-up changes to bring an environment's member grants to the ASG's members.
//!
//! Pure: the engine describes the ASG and its instances, then hands them here with the
//! environment's current grants and `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{Cidr, Description, Environment, Grant, GrantKey, Owner, Route, Source, Timestamp};

/// Which of an instance's addresses a member source admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressKind {
    /// Its public IPv4 address (none until the subnet maps one; none while stopped).
    #[default]
    Public,
    /// Its primary private IPv4 address.
    Private,
    /// Its IPv6 addresses.
    Ipv6,
}

impl AddressKind {
    pub fn parse(text: &str) -> Option<AddressKind> {
        match text {
            "public" => Some(AddressKind::Public),
            "private" => Some(AddressKind::Private),
            "ipv6" => Some(AddressKind::Ipv6),
            _ => None,
        }
    }

    /// Why an instance with no address of this kind is not admitted.
    pub fn missing(&self) -> &'static str {
        match self {
            AddressKind::Public => "it has no public IPv4 address (yet, or it is stopped)",
            AddressKind::Private => "it has no private IPv4 address",
            AddressKind::Ipv6 => "it has no IPv6 address",
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AddressKind::Public => "public",
            AddressKind::Private => "private",
            AddressKind::Ipv6 => "ipv6",
        }
    }
}

/// An ASG whose members an environment admits (`[[environments.X.members]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSource {
    pub environment: Environment,
    pub asg: String,
    /// Where the ASG is (and how to reach it: another account, an endpoint).
    pub route: Route,
    pub address: AddressKind,
    /// What a launch is answered when its own region could not admit it.
    pub on_failure: OnFailure,
}

/// The answer to a launch its own region could not admit (`on_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// `CONTINUE`, as the AWS Auto Scaling sync did: the instance serves; the failure is
    /// reported and audited, and the next true-up (or reconcile) admits it. A transient EC2
    /// error does not churn instances.
    #[default]
    Continue,
    /// `ABANDON`: Auto Scaling terminates the instance, so none serves unadmitted.
    Abandon,
}

impl OnFailure {
    pub fn parse(text: &str) -> Option<OnFailure> {
        match text {
            "continue" => Some(OnFailure::Continue),
            "abandon" => Some(OnFailure::Abandon),
            _ => None,
        }
    }
}

impl MemberSource {
    /// `asg:<region>/<name>`: the owner of this ASG's member grants.
    pub fn owner(&self) -> Owner {
        Owner::named(&format!("asg:{}/{}", self.route.region, self.asg))
    }

    /// Whether `grant` is one of this source's member grants.
    pub fn owns(&self, grant: &Grant) -> bool {
        grant.source == Source::AsgMember && grant.environment == self.environment && grant.owner.id == self.owner().id
    }
}

/// An instance of an ASG, as Auto Scaling and EC2 describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// Auto Scaling's lifecycle state: `Pending`, `Pending:Wait`, `InService`, `Terminating`, …
    pub lifecycle_state: String,
    pub public_ipv4: Option<IpAddr>,
    pub private_ipv4: Option<IpAddr>,
    pub ipv6: Vec<IpAddr>,
    /// The Auto Scaling group it belongs to, as its `aws:autoscaling:groupName` tag says
    /// (none when it has no such tag: not an Auto Scaling group's instance).
    pub asg: Option<String>,
}

impl Instance {
    /// In service or on its way in; an instance leaving (`Terminating…`, `Detaching`,
    /// `Standby`) is no longer a member.
    pub fn is_member(&self) -> bool {
        self.lifecycle_state == "InService" || self.lifecycle_state.starts_with("Pending")
    }

    /// The addresses of `kind` it has, as host CIDRs.
    pub fn addresses(&self, kind: AddressKind) -> Vec<Cidr> {
        match kind {
            AddressKind::Public => self.public_ipv4.into_iter().map(Cidr::host).collect(),
            AddressKind::Private => self.private_ipv4.into_iter().map(Cidr::host).collect(),
            AddressKind::Ipv6 => self.ipv6.iter().copied().map(Cidr::host).collect(),
        }
    }
}

/// The member grant an instance's address is, confirmed now: it lives until `now + member_ttl`
/// unless a true-up confirms it again.
pub fn member_grant(source: &MemberSource, instance_id: &str, cidr: Cidr, now: Timestamp, member_ttl: time::Duration) -> Grant {
    let description = Description::parse(&format!("{} member {instance_id}", source.asg))
        .unwrap_or_else(|_| Description::parse(instance_id).unwrap_or_default());
    Grant {
        cidr,
        environment: source.environment.clone(),
        owner: source.owner(),
        source: Source::AsgMember,
        description,
        created_at: now,
        expires_at: Some(now + member_ttl),
    }
}

/// The instance a member grant names (its description's last word), if it names one.
pub fn member_instance(grant: &Grant) -> Option<&str> {
    (grant.source == Source::AsgMember)
        .then(|| grant.description.as_str().rsplit(' ').next())
        .flatten()
        .filter(|w| w.starts_with("i-"))
}

/// A grant as `list`, `/v1/grants` and Slack show it: the grant itself, and for a member grant
/// the instance it stands for, so a reader need not pick it out of the description.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ListedGrant<'a> {
    #[serde(flatten)]
    pub grant: &'a Grant,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<&'a str>,
}

impl<'a> ListedGrant<'a> {
    pub fn new(grant: &'a Grant) -> ListedGrant<'a> {
        ListedGrant { grant, instance: member_instance(grant) }
    }

    pub fn all(grants: &'a [Grant]) -> Vec<ListedGrant<'a>> {
        grants.iter().map(ListedGrant::new).collect()
    }
}

/// What a true-up changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberPlan {
    /// Member grants to write: new members, and those confirmed again (renewed).
    pub upserts: Vec<Grant>,
    /// This source's member grants whose address no member has any more.
    pub removals: Vec<GrantKey>,
    /// Members admitted by none of their addresses, and why (no public IP yet, stopped).
    pub skipped: Vec<(String, String)>,
    /// Member addresses another grant holds already (a person's, another ASG's): left to it.
    pub held_by_others: Vec<(Cidr, Owner)>,
}

/// Brings `source`'s member grants to `instances`: every member's addresses granted (renewed
/// to `now + member_ttl`), every other address of this source's grants removed. Grants of
/// other owners are never changed; an address one of them holds is reported, not taken over.
pub fn plan_members(
    source: &MemberSource,
    instances: &[Instance],
    existing: &[Grant],
    now: Timestamp,
    member_ttl: time::Duration,
) -> MemberPlan {
    let mut plan = plan_admission(source, instances, existing, now, member_ttl);
    let wanted: BTreeSet<Cidr> = instances.iter().filter(|i| i.is_member()).flat_map(|i| i.addresses(source.address)).collect();
    for grant in existing.iter().filter(|g| source.owns(g) && !wanted.contains(&g.cidr)) {
        plan.removals.push(grant.key());
    }
    plan
}

/// [`plan_members`] without the removals: what admitting `instances` changes (a launch's).
pub fn plan_admission(
    source: &MemberSource,
    instances: &[Instance],
    existing: &[Grant],
    now: Timestamp,
    member_ttl: time::Duration,
) -> MemberPlan {
    let mut plan = MemberPlan::default();
    let mut wanted: BTreeMap<Cidr, &str> = BTreeMap::new();
    for instance in instances.iter().filter(|i| i.is_member()) {
        let addresses = instance.addresses(source.address);
        if addresses.is_empty() {
            plan.skipped.push((instance.id.clone(), source.address.missing().to_string()));
        }
        for cidr in addresses {
            wanted.entry(cidr).or_insert(&instance.id);
        }
    }
    let in_env: BTreeMap<Cidr, &Grant> =
        existing.iter().filter(|g| g.environment == source.environment && g.is_live(now)).map(|g| (g.cidr, g)).collect();
    for (cidr, instance_id) in &wanted {
        match in_env.get(cidr) {
            Some(g) if !source.owns(g) => plan.held_by_others.push((*cidr, g.owner.clone())),
            Some(g) => {
                let mut renewed = member_grant(source, instance_id, *cidr, now, member_ttl);
                renewed.created_at = g.created_at;
                plan.upserts.push(renewed);
            }
            None => plan.upserts.push(member_grant(source, instance_id, *cidr, now, member_ttl)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn source() -> MemberSource {
        MemberSource {
            environment: Environment::parse("prod").unwrap(),
            asg: "web".into(),
            route: Route { region: "us-east-1".into(), endpoint_url: None, role_arn: None },
            address: AddressKind::Public,
            on_failure: OnFailure::Continue,
        }
    }

    fn instance(id: &str, state: &str, public: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            lifecycle_state: state.into(),
            public_ipv4: public.map(|p| p.parse().unwrap()),
            private_ipv4: Some("10.0.0.9".parse().unwrap()),
            ipv6: vec![],
            asg: Some("web".into()),
        }
    }

    const NOW: Timestamp = datetime!(2026-12-03 12:00 UTC);
    const DAY: time::Duration = time::Duration::days(1);

    #[test]
    fn members_are_granted_renewed_and_removed() {
        let s = source();
        let kept = member_grant(&s, "i-1", Cidr::parse("198.51.100.1").unwrap(), NOW - DAY / 2, DAY);
        let gone = member_grant(&s, "i-2", Cidr::parse("198.51.100.2").unwrap(), NOW - DAY / 2, DAY);
        let instances = [
            instance("i-1", "InService", Some("198.51.100.1")),
            instance("i-3", "Pending:Wait", Some("198.51.100.3")),
            instance("i-2", "Terminating:Wait", Some("198.51.100.2")),
            instance("i-4", "InService", None),
        ];
        let plan = plan_members(&s, &instances, &[kept.clone(), gone.clone()], NOW, DAY);
        let upserts: Vec<(String, Option<Timestamp>, Timestamp)> =
            plan.upserts.iter().map(|g| (g.cidr.to_string(), g.expires_at, g.created_at)).collect();
        assert_eq!(
            upserts,
            [
                ("198.51.100.1/32".to_string(), Some(NOW + DAY), kept.created_at),
                ("198.51.100.3/32".to_string(), Some(NOW + DAY), NOW),
            ]
        );
        assert_eq!(plan.removals, [gone.key()]);
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].0, "i-4");
        assert_eq!(member_instance(&plan.upserts[1]), Some("i-3"));
        assert_eq!(plan.upserts[1].owner.id, "asg:us-east-1/web");
    }

    #[test]
    fn other_owners_grants_are_never_changed() {
        let s = source();
        let person = Grant {
            cidr: Cidr::parse("198.51.100.1").unwrap(),
            environment: s.environment.clone(),
            owner: Owner::named("alice"),
            source: Source::Manual,
            description: Description::parse("laptop").unwrap(),
            created_at: NOW,
            expires_at: Some(NOW + DAY),
        };
        let mut other_asg = source();
        other_asg.asg = "api".into();
        let theirs = member_grant(&other_asg, "i-9", Cidr::parse("198.51.100.9").unwrap(), NOW, DAY);
        let plan = plan_members(&s, &[instance("i-1", "InService", Some("198.51.100.1"))], &[person, theirs], NOW, DAY);
        assert!(plan.upserts.is_empty());
        assert!(plan.removals.is_empty(), "another ASG's member grant is not ours to remove");
        assert_eq!(plan.held_by_others, [(Cidr::parse("198.51.100.1").unwrap(), Owner::named("alice"))]);
    }

    #[test]
    fn the_address_kind_picks_the_address() {
        let mut s = source();
        s.address = AddressKind::Private;
        let plan = plan_members(&s, &[instance("i-1", "InService", Some("198.51.100.1"))], &[], NOW, DAY);
        assert_eq!(plan.upserts[0].cidr, Cidr::parse("10.0.0.9").unwrap());
        s.address = AddressKind::Ipv6;
        let plan = plan_members(&s, &[instance("i-1", "InService", Some("198.51.100.1"))], &[], NOW, DAY);
        assert!(plan.upserts.is_empty());
        assert_eq!(plan.skipped[0].1, "it has no IPv6 address");
    }

    #[test]
    fn a_listed_member_grant_names_its_instance_and_a_person_s_does_not() {
        let member = member_grant(&source(), "i-0abc", Cidr::parse("198.51.100.1").unwrap(), NOW, DAY);
        let json = serde_json::to_value(ListedGrant::new(&member)).unwrap();
        assert_eq!(json["instance"], "i-0abc");
        assert_eq!(json["source"], "asg-member");
        assert_eq!(json["owner"]["name"], "asg:us-east-1/web");
        let mut person = member.clone();
        person.source = Source::Manual;
        let json = serde_json::to_value(ListedGrant::new(&person)).unwrap();
        assert!(json.get("instance").is_none(), "only a member grant stands for an instance: {json}");
        assert_eq!(json["cidr"], "198.51.100.1/32");
    }
}
