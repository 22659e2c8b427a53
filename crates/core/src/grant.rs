use serde::{Deserialize, Serialize};

use crate::{Cidr, Description, Environment, Timestamp};

/// Who holds a grant: an identity from the interface that made it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
}

impl Owner {
    /// An owner known by one name only (CLI `--as`, the OS user).
    pub fn named(name: &str) -> Owner {
        Owner { id: name.to_string(), name: name.to_string(), display_name: String::new() }
    }
}

/// How a grant came to be.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Manual,
    SelfService,
    AsgMember,
    ApprovedChange,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Manual => "manual",
            Source::SelfService => "self-service",
            Source::AsgMember => "asg-member",
            Source::ApprovedChange => "approved-change",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        [Source::Manual, Source::SelfService, Source::AsgMember, Source::ApprovedChange].into_iter().find(|s| s.as_str() == text)
    }

    /// Only membership and approved-change grants may live without an expiry.
    pub fn may_be_permanent(&self) -> bool {
        matches!(self, Source::AsgMember | Source::ApprovedChange)
    }
}

/// The identity of a grant: one network in one environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantKey {
    pub cidr: Cidr,
    pub environment: Environment,
}

/// One allowed source network in one environment, until it expires.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub cidr: Cidr,
    pub environment: Environment,
    pub owner: Owner,
    pub source: Source,
    pub description: Description,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
}

impl Grant {
    pub fn key(&self) -> GrantKey {
        GrantKey { cidr: self.cidr, environment: self.environment.clone() }
    }

    /// Live grants open the firewall; a grant is dead from the instant it expires.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}
