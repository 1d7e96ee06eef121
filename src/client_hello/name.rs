//! The host name carried in the ClientHello `server_name` extension.
//!
//! The name decides which credential and which upstream a transparent
//! connection gets, so it is parsed strictly: one DNS name in A-label form,
//! never an IP literal (RFC 6066 §3 forbids them, and a literal would let the
//! client pick a destination without a name the policy can match).

use std::fmt;
use std::net::IpAddr;

/// RFC 1035 limit on the presentation form of a name without its final dot.
const MAX_NAME_LEN: usize = 253;
/// RFC 1035 limit on one label.
const MAX_LABEL_LEN: usize = 63;

/// Why an SNI host name was refused. Carries no copy of the name: it is
/// attacker-chosen bytes, and the reason is enough to explain the refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {len} bytes long, over the {MAX_NAME_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("byte {byte:#04x} at offset {offset} is not allowed in a host name")]
    BadByte { byte: u8, offset: usize },
    #[error("the name has an empty label")]
    EmptyLabel,
    #[error("a label is {len} bytes long, over the {MAX_LABEL_LEN}-byte limit")]
    LabelTooLong { len: usize },
    #[error("a label starts or ends with a hyphen")]
    HyphenAtLabelEdge,
    #[error("the name is an IP address literal")]
    IpLiteral,
}

/// A validated SNI host name: ASCII, lowercase, no trailing dot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SniName(String);

impl SniName {
    /// Parses the raw `HostName` bytes of a `server_name` entry.
    ///
    /// One trailing dot is accepted and removed, because some clients send the
    /// fully-qualified form and it names the same host.
    pub fn parse(raw: &[u8]) -> Result<Self, InvalidName> {
        let name = raw.strip_suffix(b".").unwrap_or(raw);
        if name.is_empty() {
            return Err(InvalidName::Empty);
        }
        if is_ip_literal(name) {
            return Err(InvalidName::IpLiteral);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(InvalidName::TooLong { len: name.len() });
        }
        if let Some((offset, &byte)) = name.iter().enumerate().find(|(_, b)| !is_name_byte(**b)) {
            return Err(InvalidName::BadByte { byte, offset });
        }
        let mut last_label: &[u8] = &[];
        for label in name.split(|b| *b == b'.') {
            check_label(label)?;
            last_label = label;
        }
        if ends_in_a_number(last_label) {
            return Err(InvalidName::IpLiteral);
        }
        // Every byte was checked to be ASCII above, so this cannot fail; the
        // error arm keeps the function total instead of relying on that.
        let text = std::str::from_utf8(name).map_err(|_| InvalidName::Empty)?;
        Ok(SniName(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl AsRef<str> for SniName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniName({:?})", self.0)
    }
}

/// Letters, digits, hyphen, dot, and underscore. Underscore is not LDH, but
/// real hosts use it and rustls accepts it when verifying the upstream, so
/// refusing it here would only break clients without adding safety.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

fn check_label(label: &[u8]) -> Result<(), InvalidName> {
    if label.is_empty() {
        return Err(InvalidName::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(InvalidName::LabelTooLong { len: label.len() });
    }
    if label.starts_with(b"-") || label.ends_with(b"-") {
        return Err(InvalidName::HyphenAtLabelEdge);
    }
    Ok(())
}

/// Any textual IPv4/IPv6 address, bracketed or not.
fn is_ip_literal(name: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(name) else {
        return false;
    };
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    unbracketed.parse::<IpAddr>().is_ok()
}

/// The WHATWG URL "ends in a number" rule: a final label that is decimal or
/// `0x` hex makes resolvers and URL parsers read the whole name as an IPv4
/// address in shorthand (`127.1`, `0x7f.1`, `2130706433`), so it is a literal.
fn ends_in_a_number(label: &[u8]) -> bool {
    if label.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hex = label
        .strip_prefix(b"0x")
        .or_else(|| label.strip_prefix(b"0X"));
    hex.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises_names() {
        let cases: &[(&[u8], &str)] = &[
            (b"api.example.test", "api.example.test"),
            (b"API.Example.Test", "api.example.test"),
            (b"api.example.test.", "api.example.test"),
            (b"localhost", "localhost"),
            (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
            (b"my_host.internal", "my_host.internal"),
            (b"a-b.c0", "a-b.c0"),
            (b"1.2.3.example", "1.2.3.example"),
            (b"0xzz.com", "0xzz.com"),
        ];
        for (raw, want) in cases {
            let got = SniName::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(got.as_str(), *want, "{raw:?}");
        }
    }

    #[test]
    fn accepts_the_longest_legal_name() {
        let label = "a".repeat(MAX_LABEL_LEN);
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253
        let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert_eq!(SniName::parse(name.as_bytes()).unwrap().as_str(), name);
        let with_dot = format!("{name}.");
        assert_eq!(SniName::parse(with_dot.as_bytes()).unwrap().as_str(), name);
    }

    #[test]
    fn refuses_invalid_names() {
        let long_label = "a".repeat(MAX_LABEL_LEN + 1);
        let long_name = format!("{}.com", ["abc"; 63].join("."));
        let cases: Vec<(Vec<u8>, InvalidName)> = vec![
            (b"".to_vec(), InvalidName::Empty),
            (b".".to_vec(), InvalidName::Empty),
            (b"127.0.0.1".to_vec(), InvalidName::IpLiteral),
            (b"127.0.0.1.".to_vec(), InvalidName::IpLiteral),
            (b"127.1".to_vec(), InvalidName::IpLiteral),
            (b"2130706433".to_vec(), InvalidName::IpLiteral),
            (b"0x7f.0.0.1".to_vec(), InvalidName::IpLiteral),
            (b"evil.0x7f".to_vec(), InvalidName::IpLiteral),
            (b"example.123".to_vec(), InvalidName::IpLiteral),
            (b"::1".to_vec(), InvalidName::IpLiteral),
            (b"[::1]".to_vec(), InvalidName::IpLiteral),
            (b"::ffff:169.254.169.254".to_vec(), InvalidName::IpLiteral),
            (long_name.into_bytes(), InvalidName::TooLong { len: 255 }),
            (
                b"api.example.test\0.evil.com".to_vec(),
                InvalidName::BadByte {
                    byte: 0,
                    offset: 16,
                },
            ),
            (
                b"a b.com".to_vec(),
                InvalidName::BadByte {
                    byte: b' ',
                    offset: 1,
                },
            ),
            (
                b"evil.com:443".to_vec(),
                InvalidName::BadByte {
                    byte: b':',
                    offset: 8,
                },
            ),
            (
                b"user@host.com".to_vec(),
                InvalidName::BadByte {
                    byte: b'@',
                    offset: 4,
                },
            ),
            (
                b"a/b.com".to_vec(),
                InvalidName::BadByte {
                    byte: b'/',
                    offset: 1,
                },
            ),
            (
                "b\u{fc}cher.de".as_bytes().to_vec(),
                InvalidName::BadByte {
                    byte: 0xc3,
                    offset: 1,
                },
            ),
            (b"a..com".to_vec(), InvalidName::EmptyLabel),
            (b".a.com".to_vec(), InvalidName::EmptyLabel),
            (b"a.com..".to_vec(), InvalidName::EmptyLabel),
            (
                format!("{long_label}.com").into_bytes(),
                InvalidName::LabelTooLong { len: 64 },
            ),
            (b"-a.com".to_vec(), InvalidName::HyphenAtLabelEdge),
            (b"a-.com".to_vec(), InvalidName::HyphenAtLabelEdge),
        ];
        for (raw, want) in cases {
            assert_eq!(
                SniName::parse(&raw),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }
}
