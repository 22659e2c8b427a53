//! URLs that are credentials (incoming webhooks, `response_url`s): where a request may go, and
//! how such a URL may appear in a log line or an error (redacted to `scheme://host/…`).

use reqwest::Url;

/// A URL shown without what makes it a credential: `https://hooks.slack.com/…`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            (None, _) => format!("{}:…", u.scheme()),
        },
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// `text` with every `http(s)://…` in it redacted (error texts of HTTP clients name the URL).
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("http://").into_iter().chain(rest.find("https://")).min() {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>'))
            .map_or(rest.len(), |e| start + e);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A URL prefix a request may be sent under, e.g. `https://hooks.slack.com/`: compared on the
/// parsed URL (scheme, host, port, then path), never as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPrefix {
    url: Url,
}

/// Why a configured prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be an http(s) URL prefix ending its host with /, e.g. https://hooks.slack.com/")]
pub struct PrefixError(String);

impl UrlPrefix {
    pub fn parse(text: &str) -> Result<UrlPrefix, PrefixError> {
        let refuse = || PrefixError(text.to_string());
        let host_ends_with_slash = text.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
        let url = Url::parse(text).map_err(|_| refuse())?;
        let fine = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && host_ends_with_slash
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none()
            && !tricky(text);
        if fine { Ok(UrlPrefix { url }) } else { Err(refuse()) }
    }

    /// Whether `url` lies under this prefix. A URL with a dot-segment (`/../`, `/./`), a
    /// percent-encoded dot, a backslash or user info is refused outright: parsers normalise
    /// those differently, so no text comparison of them can be trusted.
    pub fn admits(&self, url: &str) -> bool {
        if tricky(url) {
            return false;
        }
        let Ok(u) = Url::parse(url) else { return false };
        u.scheme() == self.url.scheme()
            && u.username().is_empty()
            && u.password().is_none()
            && u.host_str() == self.url.host_str()
            && u.port_or_known_default() == self.url.port_or_known_default()
            && u.path().starts_with(self.url.path())
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

/// `text` percent-decoded until nothing more decodes (`%252e` is `%2e` is `.`): what the
/// most eager server in the path would read.
fn fully_decoded(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    loop {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        if out == bytes {
            return String::from_utf8_lossy(&out).into_owned();
        }
        bytes = out;
    }
}

/// Text that different URL parsers may read differently: judged on the URL fully decoded, so
/// an encoded (or doubly encoded) dot-segment, a backslash, or a segment with parameters
/// (`..;`, read as `..` by some servers) is refused however it is spelt.
fn tricky(url: &str) -> bool {
    let decoded = fully_decoded(url);
    if decoded.contains('\\') || decoded.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return true;
    }
    let after_scheme = decoded.split_once("://").map_or(decoded.as_str(), |(_, rest)| rest);
    let path = after_scheme.split(['?', '#']).next().unwrap_or_default();
    path.split('/').skip(1).any(|segment| {
        let name = segment.split(';').next().unwrap_or_default();
        name == "." || name == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compare_parsed_urls_and_refuse_what_parsers_disagree_on() {
        let p = UrlPrefix::parse("https://hooks.slack.com/").unwrap();
        assert!(p.admits("https://hooks.slack.com/commands/T1/2/abc"));
        assert!(p.admits("https://HOOKS.slack.com/commands/T1/2/abc"), "hosts compare without case");
        assert!(p.admits("https://hooks.slack.com:443/commands/T1/2/abc"), "the default port is the port");
        for hostile in [
            "https://hooks.slack.com/resp/../evil",
            "https://hooks.slack.com/resp/./x",
            "https://hooks.slack.com/..",
            "https://hooks.slack.com/%2e%2e/evil",
            "https://hooks.slack.com/%2E%2E/evil",
            "https://hooks.slack.com/resp/..;/evil",
            "https://hooks.slack.com/resp/.;x/evil",
            "https://hooks.slack.com/%252e%252e/evil",
            "https://hooks.slack.com/%25252e%25252e/evil",
            "https://hooks.slack.com/resp/%5c../evil",
            "https://hooks.slack.com/resp%2f..%2fevil",
            "https://hooks.slack.com\\@evil.example/",
            "https://hooks.slack.com/..\\evil",
            "https://hooks.slack.com.evil.example/commands",
            "https://hooks.slack.com@evil.example/commands",
            "https://user:pw@hooks.slack.com/commands",
            "https://hooks.slack.com:8443/commands",
            "http://hooks.slack.com/commands",
            "http://169.254.169.254/latest/meta-data",
            "https://hooks.slack.com/comm ands",
            "not a url",
        ] {
            assert!(!p.admits(hostile), "{hostile}");
        }
        let path = UrlPrefix::parse("http://127.0.0.1:9/hooks/").unwrap();
        assert!(path.admits("http://127.0.0.1:9/hooks/x"));
        assert!(!path.admits("http://127.0.0.1:9/other/x"));
        assert!(!path.admits("http://127.0.0.1:10/hooks/x"));
        for bad in [
            "https://hooks.slack.com",
            "hooks.slack.com/",
            "ftp://hooks.slack.com/",
            "https://u@hooks.slack.com/",
            "https://hooks.slack.com/../",
        ] {
            assert!(UrlPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact_url("https://hooks.slack.com/services/T0/B0/SECRET"), "https://hooks.slack.com/…");
        assert_eq!(redact_url("http://127.0.0.1:9/services/T0/B0/SECRET"), "http://127.0.0.1:9/…");
        let text = "error sending request for url (https://hooks.slack.com/services/T0/B0/SECRET): connection refused";
        let redacted = redact_urls_in(text);
        assert_eq!(redacted, "error sending request for url (https://hooks.slack.com/…): connection refused");
        assert!(!redacted.contains("SECRET"));
        assert_eq!(redact_urls_in("no url here"), "no url here");
    }
}
