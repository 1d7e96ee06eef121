//! Path patterns of `[[rule]] paths`: `*` is one segment (or part of one, `repo-*`), `**` any
//! number of segments, and an optional `?key=value&...` that the request's query must
//! contain (in any order, among other pairs; `value` may be `*`).

use super::path::{NormPath, normalise};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    /// A literal segment, already in normalised spelling.
    Lit(String),
    /// A segment with `*` inside, e.g. `*.git` or `v*`: the literal pieces between stars.
    Glob(Vec<String>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    /// As written, for `policy check`.
    raw: String,
    segs: Vec<Seg>,
    /// `(key, None)`: the key must be present with any value.
    query: Vec<(String, Option<String>)>,
}

impl PathPattern {
    /// Parses `/a/*/b/**?k=v`. The literal parts are normalised like request paths, so a
    /// pattern written `/%7Euser` matches a request for `/~user`.
    pub fn parse(raw: &str) -> Result<PathPattern, String> {
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        if !path.starts_with('/') {
            return Err(format!("path pattern '{raw}' must start with '/'"));
        }
        let mut segs = Vec::new();
        for part in path[1..].split('/').filter(|s| !s.is_empty()) {
            let seg = match part {
                "*" => Seg::One,
                "**" => Seg::Any,
                p if p.contains("**") => {
                    return Err(format!(
                        "path pattern '{raw}': '**' must be a whole segment"
                    ));
                }
                p if p.contains('*') => Seg::Glob(
                    p.split('*')
                        .map(|lit| norm_literal(raw, lit))
                        .collect::<Result<_, _>>()?,
                ),
                p => Seg::Lit(norm_literal(raw, p)?),
            };
            // `**/**` means the same as `**` and would only cost backtracking.
            if !(seg == Seg::Any && segs.last() == Some(&Seg::Any)) {
                segs.push(seg);
            }
        }
        let query = match query {
            None => Vec::new(),
            Some(q) => {
                let n = normalise("/", Some(q))
                    .map_err(|e| format!("path pattern '{raw}': query: {e}"))?;
                n.query
                    .into_iter()
                    .map(|(k, v)| (k, (v != "*").then_some(v)))
                    .collect()
            }
        };
        Ok(PathPattern {
            raw: raw.to_string(),
            segs,
            query,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn matches(&self, path: &NormPath) -> bool {
        self.query.iter().all(|(k, v)| {
            path.query
                .iter()
                .any(|(pk, pv)| pk == k && v.as_ref().is_none_or(|v| v == pv))
        }) && match_segs(&self.segs, &path.segments)
    }
}

fn norm_literal(raw: &str, lit: &str) -> Result<String, String> {
    if lit.is_empty() {
        return Ok(String::new());
    }
    let n =
        normalise(&format!("/{lit}"), None).map_err(|e| format!("path pattern '{raw}': {e}"))?;
    match n.segments.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "path pattern '{raw}': '{lit}' is not a plain segment"
        )),
    }
}

/// Segment matching with `**` backtracking. Patterns are short (a handful of segments), and
/// consecutive `**` are merged at parse time, so this stays cheap.
fn match_segs(pat: &[Seg], path: &[String]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((Seg::Any, rest)) => (0..=path.len()).any(|skip| match_segs(rest, &path[skip..])),
        Some((seg, rest)) => match path.split_first() {
            Some((first, tail)) => seg_matches(seg, first) && match_segs(rest, tail),
            None => false,
        },
    }
}

fn seg_matches(seg: &Seg, s: &str) -> bool {
    match seg {
        Seg::Lit(l) => l == s,
        Seg::One => true,
        Seg::Any => true,
        Seg::Glob(parts) => glob(parts, s),
    }
}

/// `parts` are the literal pieces between `*`s: the first anchors the start, the last the end.
fn glob(parts: &[String], s: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if parts.len() == 1 {
        return first == s;
    }
    if !s.starts_with(first.as_str()) || s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    if !s.ends_with(last.as_str()) {
        return false;
    }
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, path: &str) -> bool {
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        PathPattern::parse(pat)
            .expect(pat)
            .matches(&normalise(p, q).expect(path))
    }

    #[test]
    fn pattern_table() {
        let table: &[(&str, &str, bool)] = &[
            (
                "/**/git-receive-pack",
                "/org/repo.git/git-receive-pack",
                true,
            ),
            ("/**/git-receive-pack", "/git-receive-pack", true),
            (
                "/**/git-receive-pack",
                "/org/repo/x/../git-receive-pack",
                true,
            ),
            (
                "/**/git-receive-pack",
                "//org//repo/git-receive-pack/",
                true,
            ),
            ("/**/git-receive-pack", "/org/repo/git-upload-pack", false),
            ("/**/git-receive-pack", "/org/git-receive-pack/x", false),
            ("/*/repo", "/org/repo", true),
            ("/*/repo", "/repo", false),
            ("/*/repo", "/a/b/repo", false),
            ("/repos/*/*", "/repos/o/r", true),
            ("/repos/*/*", "/repos/o/r/issues", false),
            ("/repos/o/**", "/repos/o", true),
            ("/repos/o/**", "/repos/o/r/issues/1", true),
            ("/repos/o/**", "/repos/other", false),
            ("/**", "/", true),
            ("/", "/", true),
            ("/", "/a", false),
            ("/*.git/**", "/repo.git/info/refs", true),
            ("/*.git/**", "/repo/info/refs", false),
            ("/v*/models", "/v1/models", true),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/axxbyyc", true),
            ("/a*b*c", "/ac", false),
            // Path matching is case-sensitive.
            ("/Repo", "/repo", false),
            // Encoded unreserved characters in the pattern or the path are equivalent.
            ("/%7Euser", "/~user", true),
            ("/~user", "/%7euser", true),
            // Query: the named pairs must be present, in any order, among others.
            (
                "/**/info/refs?service=git-receive-pack",
                "/r/info/refs?service=git-receive-pack",
                true,
            ),
            (
                "/**/info/refs?service=git-receive-pack",
                "/r/info/refs?x=1&service=git-receive-pack",
                true,
            ),
            (
                "/**/info/refs?service=git-receive-pack",
                "/r/info/refs?service=git%2dreceive-pack",
                true,
            ),
            (
                "/**/info/refs?service=git-receive-pack",
                "/r/info/refs?service=git-upload-pack",
                false,
            ),
            (
                "/**/info/refs?service=git-receive-pack",
                "/r/info/refs",
                false,
            ),
            (
                "/**/info/refs?service=*",
                "/r/info/refs?service=anything",
                true,
            ),
            // Without a query in the pattern, any query matches.
            (
                "/**/info/refs",
                "/r/info/refs?service=git-receive-pack",
                true,
            ),
        ];
        for (pat, path, want) in table {
            assert_eq!(m(pat, path), *want, "{pat} vs {path}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        for p in ["repo", "/a**", "/a/%2f", "/..", "/a?x=%zz"] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
    }
}
