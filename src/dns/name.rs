//! Turning a wire-format query name into the text form the policy matches on.
//!
//! A DNS label may hold any byte, including `.`. Joining such labels naively would let
//! `["x", "api.example.com"]` read as `x.api.example.com` and pass a suffix rule while
//! meaning a different name upstream. Only letter-digit-hyphen-underscore labels become a
//! host name; anything else is refused without consulting the policy.

use hickory_proto::rr::Name;

/// RFC 1035 label limit.
const MAX_LABEL_LEN: usize = 63;
/// RFC 1035 name limit in text form without the trailing dot.
const MAX_NAME_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryName {
    /// Lowercase, dot-separated, no trailing dot: ready for `NamePolicy::allows`.
    Host(String),
    /// Not a host name; carries an escaped, log-safe rendering.
    Invalid(String),
}

pub(crate) fn query_name(name: &Name) -> QueryName {
    let mut text = String::with_capacity(name.len());
    let mut valid = name.num_labels() > 0;
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        for &byte in label {
            if is_host_byte(byte) {
                text.push(char::from(byte.to_ascii_lowercase()));
            } else {
                valid = false;
                // Decimal escapes as in zone files; keeps the blocked log one clean line.
                text.push_str(&format!("\\{byte:03}"));
            }
        }
    }
    if text.is_empty() {
        text.push('.');
    }
    if valid {
        QueryName::Host(text)
    } else {
        QueryName::Invalid(text)
    }
}

/// True for a lowercase or mixed-case host name without trailing dot.
pub(crate) fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.bytes().all(is_host_byte)
        })
}

fn is_host_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(parts: &[&[u8]]) -> Name {
        Name::from_labels(parts.iter().copied()).unwrap()
    }

    #[test]
    fn plain_names_are_lowercased_without_trailing_dot() {
        let name = Name::from_ascii("API.Example.COM.").unwrap();
        assert_eq!(query_name(&name), QueryName::Host("api.example.com".into()));
    }

    #[test]
    fn a_dot_inside_a_label_is_not_a_host_name() {
        let name = labels(&[b"x", b"api.example.com"]);
        assert_eq!(
            query_name(&name),
            QueryName::Invalid("x.api\\046example\\046com".into())
        );
    }

    #[test]
    fn control_and_space_bytes_are_escaped() {
        let name = labels(&[b"a b\n", b"example"]);
        assert_eq!(
            query_name(&name),
            QueryName::Invalid("a\\032b\\010.example".into())
        );
    }

    #[test]
    fn root_is_invalid() {
        assert_eq!(query_name(&Name::root()), QueryName::Invalid(".".into()));
    }

    #[test]
    fn hostname_rules() {
        assert!(is_hostname("a-b_c.example"));
        assert!(!is_hostname(""));
        assert!(!is_hostname("a..b"));
        assert!(!is_hostname(&"a".repeat(64)));
        assert!(!is_hostname("a b"));
    }
}
