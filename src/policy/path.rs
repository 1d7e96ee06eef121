//! Request paths as the rules see them: one canonical spelling, so that `/a/../x`, `//x`,
//! `%2e%2e` and friends cannot slip past a rule that names `/x`. A path whose meaning the
//! upstream could read differently from us is refused rather than guessed at.

use std::fmt;

/// A normalised request target: `/`-separated segments with dot segments resolved, repeated
/// slashes collapsed and unreserved characters percent-decoded; plus the query split into
/// `key=value` pairs (decoded the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormPath {
    /// Without empty segments: `/` is `[]`, `/a/b/` is `["a", "b"]`.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
}

/// Why a path cannot be normalised safely. Each names a trick an upstream might decode
/// differently from us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`/...`), e.g. `*` or an empty path.
    NotOriginForm,
    /// `%` not followed by two hex digits.
    BadPercent,
    /// An encoded `/`, `\` or NUL: servers disagree on whether it separates segments.
    EncodedSeparator,
    /// A literal `\`, which some servers treat as `/`.
    Backslash,
    /// `;` path parameters, which some servers strip before routing.
    PathParameter,
    /// `..` above the root.
    AboveRoot,
    /// Control or non-ASCII bytes.
    BadByte,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "the path does not start with '/'",
            PathError::BadPercent => "a '%' is not followed by two hex digits",
            PathError::EncodedSeparator => "the path has an encoded '/', '\\' or NUL",
            PathError::Backslash => "the path has a '\\'",
            PathError::PathParameter => "the path has ';' parameters",
            PathError::AboveRoot => "the path climbs above '/' with '..'",
            PathError::BadByte => "the path has a control or non-ASCII byte",
        })
    }
}

/// Normalises `path` (and `query`, without its `?`) as the rules match them.
pub fn normalise(path: &str, query: Option<&str>) -> Result<NormPath, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotOriginForm)?;
    let mut segments: Vec<String> = Vec::new();
    for raw in rest.split('/') {
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        let seg = decode(raw)?;
        if seg.contains(';') {
            return Err(PathError::PathParameter);
        }
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => segments.push(seg),
        }
    }
    let query = match query {
        None | Some("") => Vec::new(),
        Some(q) => q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((decode_query(k)?, decode_query(v)?))
            })
            .collect::<Result<_, PathError>>()?,
    };
    Ok(NormPath { segments, query })
}

/// Decodes `%XX` when it stands for an unreserved character (RFC 3986 §2.3: the only ones
/// whose encoded and plain forms are equivalent) and upper-cases the hex of the rest.
fn decode(raw: &str) -> Result<String, PathError> {
    decode_with(raw, true)
}

fn decode_with(raw: &str, in_path: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
            let v = hex_pair(hex).ok_or(PathError::BadPercent)?;
            if in_path && matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::EncodedSeparator);
            }
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(hex[0].to_ascii_uppercase()));
                out.push(char::from(hex[1].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if b.is_ascii_control() || !b.is_ascii() {
            return Err(PathError::BadByte);
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(out)
}

/// Query keys and values: a `/` may legitimately be encoded there, so only the decoding of
/// unreserved characters is shared with paths.
fn decode_query(raw: &str) -> Result<String, PathError> {
    decode_with(raw, false)
}

fn hex_pair(hex: &[u8]) -> Option<u8> {
    let d = |c: u8| char::from(c).to_digit(16);
    match hex {
        [a, b] => Some((d(*a)? * 16 + d(*b)?) as u8),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Result<Vec<String>, PathError> {
        normalise(p, None).map(|n| n.segments)
    }

    #[test]
    fn every_spelling_of_one_path_normalises_the_same() {
        let want = vec!["repo".to_string(), "git-receive-pack".to_string()];
        for p in [
            "/repo/git-receive-pack",
            "/repo/git-receive-pack/",
            "//repo//git-receive-pack",
            "/repo/./git-receive-pack",
            "/repo/x/../git-receive-pack",
            "/repo/x/%2e%2e/git-receive-pack",
            "/repo/x/%2E%2E/git-receive-pack",
            "/repo/x/.%2e/git-receive-pack",
            "/repo/%2e/git-receive-pack",
            "/r%65po/git-receive-pack",
            "/repo/git%2Dreceive%2Dpack",
            "/a/b/../../repo/git-receive-pack",
        ] {
            assert_eq!(segs(p), Ok(want.clone()), "{p}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        use PathError::*;
        for (p, e) in [
            ("", NotOriginForm),
            ("*", NotOriginForm),
            ("repo", NotOriginForm),
            ("/..", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("/a%2fgit-receive-pack", EncodedSeparator),
            ("/a%2Fb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a%00b", EncodedSeparator),
            ("/a\\git-receive-pack", Backslash),
            ("/a/git-receive-pack;x=1", PathParameter),
            ("/a%zz", BadPercent),
            ("/a%2", BadPercent),
            ("/a%", BadPercent),
            ("/a\u{7f}", BadByte),
            ("/ü", BadByte),
        ] {
            assert_eq!(segs(p), Err(e), "{p}");
        }
    }

    #[test]
    fn reserved_characters_stay_encoded_with_uppercase_hex() {
        assert_eq!(segs("/a%3fb%23c"), Ok(vec!["a%3Fb%23c".to_string()]));
        assert_eq!(segs("/%7euser"), Ok(vec!["~user".to_string()]));
        // An encoded `;` is data, not a parameter: it stays encoded and matches no literal.
        assert_eq!(
            segs("/a/x%3by"),
            Ok(vec!["a".to_string(), "x%3By".to_string()])
        );
        assert_eq!(segs("/"), Ok(vec![]));
    }

    #[test]
    fn query_pairs_are_decoded() {
        let n = normalise("/info/refs", Some("service=git%2Dreceive%2dpack&&x&y=%2F")).unwrap();
        assert_eq!(
            n.query,
            vec![
                ("service".into(), "git-receive-pack".into()),
                ("x".into(), "".into()),
                ("y".into(), "%2F".into())
            ]
        );
        assert!(normalise("/", Some("a=%zz")).is_err());
    }
}
