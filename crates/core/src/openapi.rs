//! OpenAPI schemas (with the `openapi` feature) of the domain's values that serialise as text:
//! each is a string, described as the HTTP API reads and writes it. The structs and enums
//! derive theirs (`utoipa::ToSchema`) beside their serde attributes, so a schema cannot drift
//! from what is sent.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// A string schema with a description and an example.
fn text(description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).examples([example]).into()
}

macro_rules! text_schema {
    ($($ty:ty => $description:literal, $example:literal;)*) => {$(
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                text($description, $example)
            }
        }
        impl utoipa::ToSchema for $ty {}
    )*};
}

text_schema! {
    crate::Cidr => "An IPv4 or IPv6 network, canonical: host bits cleared, a bare address as /32 or /128", "203.0.113.7/32";
    crate::Environment => "An environment's name", "dev";
    crate::Description => "Printable text, at most 200 characters, stored as given", "Home office";
    crate::ActorName => "Who acted: a user's name (with their id when it differs), or one of portcullis's own actors", "alice";
    crate::AuditScope => "The environments an event concerns: a name, names joined by commas, `*` for every one, `-` for none known", "dev";
    crate::PortRange => "A protocol and ports, `tcp:443` or `udp:500-501`", "tcp:443";
    crate::Ttl => "A duration in the TTL grammar: `Nm` (1-1440), `Nh` (1-24), `Nd` (1-365), or `Ns` (whole seconds)", "1h";
}
