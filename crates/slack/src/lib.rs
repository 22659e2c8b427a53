//! Slack's side of portcullis, over Slack's real wire formats: request signatures, the
//! `/infra whitelist …` grammar, Block Kit replies, the IP Whitelist Manager's notification texts, incoming
//! webhook delivery, `response_url` posts and user-group lookups.

pub mod command;
pub mod directory;
pub mod guard;
pub mod messages;
pub mod respond;
pub mod signature;
pub mod url;
pub mod webhook;

pub use command::{Command, ParseError, parse, usage};
pub use directory::Directory;
pub use messages::{Reply, Visibility, notification};
pub use respond::{RespondError, Responder};
pub use signature::{SignatureError, SigningSecret, SigningSecrets};
pub use url::{PrefixError, UrlPrefix, redact_url, redact_urls_in};
pub use webhook::{FixedUrl, SecretError, UrlSource, Webhook, secret_field, webhook_url_from_secret};
