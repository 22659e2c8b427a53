//! Slack's side of portcullis, over Slack's real wire formats: request signatures, the
//! `/infra whitelist …` grammar, Block Kit replies, the seed's notification texts, incoming
//! webhook delivery, `response_url` posts and user-group lookups.

pub mod command;
pub mod directory;
pub mod messages;
pub mod respond;
pub mod signature;
pub mod url;
pub mod webhook;

pub use command::{parse, usage, Command, ParseError};
pub use directory::Directory;
pub use messages::{notification, Reply, Visibility};
pub use respond::{RespondError, Responder};
pub use signature::{SignatureError, SigningSecret, SigningSecrets};
pub use url::{redact_url, redact_urls_in, PrefixError, UrlPrefix};
pub use webhook::{secret_field, webhook_url_from_secret, FixedUrl, SecretError, UrlSource, Webhook};
