//! Posting final answers to a slash command's `response_url`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::url::UrlPrefix;
use crate::webhook::{error_chain, http_client};

/// Slack accepts at most this many posts to one `response_url`…
pub const MAX_POSTS_PER_URL: u8 = 5;
/// …within this long after the command.
const URL_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Attempts per answer (each counts toward the five).
const ATTEMPTS: u8 = 3;

/// Why an answer could not be posted to a `response_url`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    #[error("response_url is not on an allowed host")]
    NotAllowed,
    #[error("already posted {MAX_POSTS_PER_URL} times to this response_url")]
    UsedUp,
    #[error("response_url answered {0}")]
    Refused(u16),
    #[error("response_url post failed: {0}")]
    Failed(String),
}

/// Posts to `response_url`s, only to the allowed prefixes, at most five times each.
pub struct Responder {
    client: reqwest::Client,
    allowed_prefixes: Vec<UrlPrefix>,
    posts: Mutex<HashMap<String, (u8, Instant)>>,
}

impl Responder {
    /// `allowed_prefixes` are URL prefixes such as `https://hooks.slack.com/`: a signed request
    /// still never makes this server post anywhere else.
    pub fn new(allowed_prefixes: Vec<UrlPrefix>) -> Responder {
        Responder { client: http_client(), allowed_prefixes, posts: Mutex::new(HashMap::new()) }
    }

    pub fn allows(&self, url: &str) -> bool {
        self.allowed_prefixes.iter().any(|p| p.admits(url))
    }

    /// Takes one of the URL's posts, or says why there is none left.
    fn take_post(&self, url: &str) -> Result<(), RespondError> {
        let mut posts = self.posts.lock().expect("responder mutex poisoned");
        posts.retain(|_, (_, first)| first.elapsed() < URL_LIFETIME);
        let (count, _) = posts.entry(url.to_string()).or_insert((0, Instant::now()));
        if *count >= MAX_POSTS_PER_URL {
            return Err(RespondError::UsedUp);
        }
        *count += 1;
        Ok(())
    }

    /// Posts a reply, retrying a failed post twice.
    pub async fn post<T: serde::Serialize + ?Sized + Sync>(&self, url: &str, reply: &T) -> Result<(), RespondError> {
        if !self.allows(url) {
            return Err(RespondError::NotAllowed);
        }
        let mut last = RespondError::UsedUp;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            self.take_post(url)?;
            match self.client.post(url).json(reply).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_client_error() && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    return Err(RespondError::Refused(r.status().as_u16()));
                }
                Ok(r) => last = RespondError::Refused(r.status().as_u16()),
                Err(e) => last = RespondError::Failed(error_chain(e)),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_prefixes_and_five_posts() {
        let r = Responder::new(vec![UrlPrefix::parse("https://hooks.slack.com/").unwrap()]);
        assert!(r.allows("https://hooks.slack.com/commands/T/1/x"));
        assert!(!r.allows("https://hooks.slack.com.evil.example/commands"));
        assert!(!r.allows("http://169.254.169.254/latest/meta-data"));
        for _ in 0..MAX_POSTS_PER_URL {
            r.take_post("https://hooks.slack.com/a").unwrap();
        }
        assert!(r.take_post("https://hooks.slack.com/a").is_err());
        assert!(r.take_post("https://hooks.slack.com/b").is_ok());
    }
}
