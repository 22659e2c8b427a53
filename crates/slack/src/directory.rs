//! Slack user-group membership, for environments that allow groups (`usergroups.users.list`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::webhook::{error_chain, http_client};

/// How long a group's member list is trusted.
const CACHE_FOR: Duration = Duration::from_secs(300);

/// Asks Slack's Web API who is in a user group, with a bot token (`usergroups:read`).
pub struct Directory {
    client: reqwest::Client,
    api_url: String,
    token: String,
    cache: Mutex<HashMap<String, Cached>>,
}

/// A group's members, and when Slack said so.
type Cached = (Instant, Arc<BTreeSet<String>>);

#[derive(Deserialize)]
struct UsersList {
    ok: bool,
    #[serde(default)]
    users: Vec<String>,
    error: Option<String>,
}

impl Directory {
    /// `api_url` is Slack's Web API base, `https://slack.com/api`.
    pub fn new(api_url: &str, token: String) -> Directory {
        Directory {
            client: http_client(),
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The groups among `groups` that `user_id` belongs to.
    pub async fn groups_of(&self, user_id: &str, groups: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let mut member_of = Vec::new();
        for group in groups {
            if self.members(group).await?.contains(user_id) {
                member_of.push(group.clone());
            }
        }
        Ok(member_of)
    }

    async fn members(&self, group: &str) -> Result<Arc<BTreeSet<String>>, String> {
        if let Some((at, members)) = self.cache.lock().expect("directory mutex poisoned").get(group)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(members.clone());
        }
        let query = serde_urlencoded::to_string([("usergroup", group)]).map_err(|e| e.to_string())?;
        let url = format!("{}/usergroups.users.list?{query}", self.api_url);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("could not ask Slack who is in {group}: {}", error_chain(e)))?;
        let status = response.status();
        let list: UsersList =
            response.json().await.map_err(|e| format!("Slack's answer about {group} ({status}) was unreadable: {e}"))?;
        if !list.ok {
            return Err(format!("Slack refused to list {group}: {}", list.error.unwrap_or_else(|| status.to_string())));
        }
        let members = Arc::new(list.users.into_iter().collect::<BTreeSet<_>>());
        self.cache.lock().expect("directory mutex poisoned").insert(group.to_string(), (Instant::now(), members.clone()));
        Ok(members)
    }
}
