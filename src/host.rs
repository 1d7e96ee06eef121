//! Host names as the policy sees them, and the patterns of `ALLOWED_DOMAINS`.
//!
//! Every place that takes a host from the network (CONNECT authority, `Host` header,
//! absolute URI, SNI) goes through [`Host::parse`] or [`parse_authority`], so that
//! normalisation (case, trailing dot, IPv6 brackets, port) is the same everywhere and a
//! look-alike can never slip past one entry point but not another.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};

/// Longest DNS name in presentation form (RFC 1035 §2.3.4, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A normalised host: a lowercase DNS name without trailing dot, or an IP literal
/// (IPv6 without brackets). Cheap to clone and compare.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host name")]
    Empty,
    #[error("host name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("host name has an empty label or a label longer than {MAX_LABEL_LEN} bytes")]
    BadLabel,
    #[error(
        "host name has a character outside letters, digits, '-', '_' and '.' (use the punycode xn-- form for international names)"
    )]
    BadChar,
    #[error("missing port")]
    MissingPort,
    #[error("port is not a number in 1..65535")]
    BadPort,
    #[error("unbalanced brackets around an IPv6 address")]
    BadBrackets,
}

impl Host {
    /// Parses a bare host (no port). Accepts `Example.COM.`, `1.2.3.4`, `::1` and `[::1]`.
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        let unbracketed = match (raw.strip_prefix('['), raw.strip_suffix(']')) {
            (Some(_), Some(_)) if raw.len() >= 2 => &raw[1..raw.len() - 1],
            (None, None) => raw,
            _ => return Err(HostError::BadBrackets),
        };
        if let Ok(ip) = IpAddr::from_str(unbracketed) {
            return Ok(Host::from_ip(ip));
        }
        if unbracketed.contains(':') {
            return Err(HostError::BadChar);
        }
        let name = unbracketed.strip_suffix('.').unwrap_or(unbracketed);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(HostError::TooLong);
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL_LEN {
                return Err(HostError::BadLabel);
            }
            // Underscore appears in real service names (e.g. `_acme-challenge`); anything
            // else outside LDH would let two spellings of one name diverge.
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(HostError::BadChar);
            }
        }
        Ok(Host(name.to_ascii_lowercase().into()))
    }

    pub fn from_ip(ip: IpAddr) -> Host {
        // Canonical form: an IPv4-mapped IPv6 literal names the same host as the IPv4 one.
        Host(ip.to_canonical().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The IP address if this host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        IpAddr::from_str(&self.0).ok()
    }

    /// `host:port` as it belongs in a CONNECT line or a `Host` header (brackets for IPv6).
    pub fn with_port(&self, port: u16) -> String {
        match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]:{port}", self.0),
            _ => format!("{}:{port}", self.0),
        }
    }

    /// `host` when `port` is the scheme's default, `host:port` otherwise (brackets for IPv6),
    /// as URLs and `Host` headers write it.
    pub fn authority(&self, port: u16, default_port: u16) -> String {
        match (port == default_port, self.ip()) {
            (false, _) => self.with_port(port),
            (true, Some(IpAddr::V6(_))) => format!("[{}]", self.0),
            (true, _) => self.0.to_string(),
        }
    }

    /// `self` equals `suffix` or is a subdomain of it (label boundary, so
    /// `evil-example.test` is not under `example.test`).
    pub fn is_within(&self, suffix: &Host) -> bool {
        let (me, sfx) = (self.as_str(), suffix.as_str());
        me == sfx
            || (self.ip().is_none()
                && me.len() > sfx.len()
                && me.ends_with(sfx)
                && me.as_bytes()[me.len() - sfx.len() - 1] == b'.')
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({})", self.0)
    }
}

/// Splits `host:port`, `[v6]:port` or (when `default_port` is given) a bare host.
pub fn parse_authority(raw: &str, default_port: Option<u16>) -> Result<(Host, u16), HostError> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(HostError::BadBrackets)?;
        match after {
            "" => (inside, None),
            p => (inside, Some(p.strip_prefix(':').ok_or(HostError::BadPort)?)),
        }
    } else {
        match raw.rsplit_once(':') {
            // A bare IPv6 literal without brackets has several colons and no port.
            Some((h, _)) if h.contains(':') => (raw, None),
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(HostError::MissingPort)?,
    };
    Ok((Host::parse(host)?, port))
}

pub fn parse_port(raw: &str) -> Result<u16, HostError> {
    match raw.parse::<u16>() {
        Ok(p) if p != 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(HostError::BadPort),
    }
}

/// One entry of `ALLOWED_DOMAINS` or of a credential route's `domains`.
#[derive(Clone, Debug)]
pub enum DomainPattern {
    /// `api.example.com`: that host only.
    Exact(Host),
    /// `.example.com`: `example.com` and every subdomain.
    Suffix(Host),
    /// `~regex`: case-insensitive match against the normalised host.
    Regex(Regex),
}

#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("empty entry")]
    Empty,
    #[error("'{0}' is not a valid host name: {1}")]
    Host(String, HostError),
    #[error("regex does not compile: {0}")]
    Regex(String),
}

/// The pattern as a table writes it (`api.x.com`, `.x.com`, `~regex`).
impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(h) => write!(f, "{h}"),
            DomainPattern::Suffix(h) => write!(f, ".{h}"),
            DomainPattern::Regex(r) => write!(f, "~{}", r.as_str()),
        }
    }
}

impl DomainPattern {
    pub fn parse(raw: &str) -> Result<DomainPattern, PatternError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        if let Some(re) = raw.strip_prefix('~') {
            return RegexBuilder::new(re)
                .case_insensitive(true)
                // Bounded so a pathological pattern cannot blow up memory at startup.
                .size_limit(1 << 20)
                .build()
                .map(DomainPattern::Regex)
                .map_err(|e| PatternError::Regex(first_line(&e.to_string())));
        }
        // `*.example.com` is the spelling people reach for; it means the same as `.example.com`.
        let (suffix, name) = match raw.strip_prefix("*.").or_else(|| raw.strip_prefix('.')) {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let host = Host::parse(name).map_err(|e| PatternError::Host(raw.to_string(), e))?;
        Ok(if suffix {
            DomainPattern::Suffix(host)
        } else {
            DomainPattern::Exact(host)
        })
    }

    pub fn matches(&self, host: &Host) -> bool {
        match self {
            DomainPattern::Exact(h) => h == host,
            DomainPattern::Suffix(s) => host.is_within(s),
            DomainPattern::Regex(re) => re.is_match(host.as_str()),
        }
    }
}

/// Parses a comma-separated pattern list; the error says which entry is bad.
pub fn parse_patterns(list: &str) -> Result<Vec<DomainPattern>, PatternError> {
    split_list(list).map(DomainPattern::parse).collect()
}

/// Splits a comma (or whitespace) separated list, dropping empty items.
pub fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ', '\n', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn first_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Host {
        Host::parse(s).expect(s)
    }

    #[test]
    fn normalisation_is_the_same_for_every_spelling() {
        for raw in ["API.Example.test", "api.example.test.", "api.example.test"] {
            assert_eq!(h(raw).as_str(), "api.example.test");
        }
        assert_eq!(h("[::1]").as_str(), "::1");
        assert_eq!(h("::ffff:10.0.0.1").as_str(), "10.0.0.1");
        assert_eq!(h("::1").with_port(443), "[::1]:443");
        assert_eq!(h("::1").authority(443, 443), "[::1]");
        assert_eq!(h("a.com").authority(80, 80), "a.com");
        assert_eq!(h("a.com").authority(8080, 80), "a.com:8080");
    }

    #[test]
    fn bad_hosts_are_rejected() {
        for raw in [
            "",
            ".",
            "a..b",
            "a b",
            "a/b",
            "ex%61mple.com",
            "[::1",
            "ünï.com",
            "a:b",
        ] {
            assert!(Host::parse(raw).is_err(), "{raw}");
        }
        assert_eq!(
            Host::parse(&"a".repeat(64)).unwrap_err(),
            HostError::BadLabel
        );
    }

    #[test]
    fn authority_forms() {
        type Case<'a> = (&'a str, Option<u16>, Option<(&'a str, u16)>);
        let cases: &[Case] = &[
            (
                "api.example.test:443",
                None,
                Some(("api.example.test", 443)),
            ),
            (
                "API.example.test.:8443",
                None,
                Some(("api.example.test", 8443)),
            ),
            ("[::1]:443", None, Some(("::1", 443))),
            ("[::1]", Some(80), Some(("::1", 80))),
            ("::1", Some(80), Some(("::1", 80))),
            ("example.com", Some(80), Some(("example.com", 80))),
            ("example.com", None, None),
            ("example.com:0", None, None),
            ("example.com:65536", None, None),
            ("example.com:+1", None, None),
            ("example.com:", None, None),
            ("[::1]x", None, None),
        ];
        for (raw, default, want) in cases {
            let got = parse_authority(raw, *default).ok();
            let got = got.as_ref().map(|(h, p)| (h.as_str(), *p));
            assert_eq!(got, *want, "{raw}");
        }
    }

    #[test]
    fn patterns_match_by_label() {
        let table: &[(&str, &str, bool)] = &[
            (".example.test", "example.test", true),
            (".example.test", "api.example.test", true),
            (".example.test", "API.EXAMPLE.TEST.", true),
            (".example.test", "evil-example.test", false),
            (".example.test", "example.test.evil.net", false),
            ("*.example.test", "api.example.test", true),
            ("github.com", "github.com", true),
            ("github.com", "api.github.com", false),
            (
                "~^aiplatform\\.cloudapis\\.test$",
                "AIPlatform.cloudapis.test",
                true,
            ),
            (
                "~^aiplatform\\.cloudapis\\.test$",
                "xaiplatform.cloudapis.test",
                false,
            ),
            ("10.0.0.1", "10.0.0.1", true),
            (".0.0.1", "10.0.0.1", false),
        ];
        for (pat, host, want) in table {
            let p = DomainPattern::parse(pat).expect(pat);
            assert_eq!(p.matches(&h(host)), *want, "{pat} vs {host}");
        }
    }

    #[test]
    fn pattern_errors_name_the_problem() {
        assert!(matches!(
            DomainPattern::parse("~("),
            Err(PatternError::Regex(_))
        ));
        assert!(matches!(
            DomainPattern::parse("bad host"),
            Err(PatternError::Host(..))
        ));
        assert_eq!(parse_patterns("a.com, .b.com,,").unwrap().len(), 2);
    }
}
