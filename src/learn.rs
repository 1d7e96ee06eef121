//! Learning mode (`PAUDE_PROXY_LEARN`): records every distinct (agent, client, host, port,
//! method, path shape) the proxy sees, allowed or denied, without changing enforcement; and
//! `policy suggest`, which turns that record into a policy file allowing exactly that traffic.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::audit_log::LineFile;

/// Distinct entries kept in memory to skip repeats; past this new shapes are still written
/// (the suggestion dedups), only the in-memory filter stops growing.
const MAX_REMEMBERED: usize = 100_000;

/// One line of the learn file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub client: String,
    pub host: String,
    pub port: u16,
    pub method: String,
    /// Normalised, query dropped, variable segments (ids, hashes) collapsed into `*`.
    pub path: String,
}

pub struct Learn {
    file: LineFile,
    seen: Mutex<HashSet<Seen>>,
}

impl Learn {
    /// Opens the record for appending; entries already in it are not written again.
    pub fn open(path: &Path) -> io::Result<Learn> {
        let seen = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(Learn {
            file: LineFile::open(path)?,
            seen: Mutex::new(seen),
        })
    }

    pub fn note(&self, seen: Seen) {
        let fresh = {
            let mut set = match self.seen.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            if set.contains(&seen) {
                false
            } else {
                if set.len() < MAX_REMEMBERED {
                    set.insert(seen.clone());
                }
                true
            }
        };
        if fresh && let Ok(line) = serde_json::to_string(&seen) {
            self.file.write(line);
        }
    }
}

/// The shape of a path: `/repos/octo/hello/pulls/1234` → `/repos/octo/hello/pulls/*`.
/// Unparsable paths keep a fixed marker so the suggestion shows they were seen.
pub fn path_shape(path: &str) -> String {
    match crate::policy::path::normalise(path, None) {
        Ok(n) => {
            let segs: Vec<&str> = n
                .segments
                .iter()
                .map(|s| if is_variable(s) { "*" } else { s.as_str() })
                .collect();
            format!("/{}", segs.join("/"))
        }
        Err(_) => "/(unsafe path)".to_string(),
    }
}

/// Ids, hashes, UUIDs, long tokens: anything that will differ on the next run.
fn is_variable(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
    let uuidish = seg.len() == 36 && seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    seg.contains('*')
        || seg.contains('%')
        || (digits == seg.len() && !seg.is_empty())
        || (hex && seg.len() >= 7 && digits > 0)
        || uuidish
        || (seg.len() >= 20 && digits > 0)
}

/// `policy suggest`: a policy file (TOML text) that allows exactly the recorded traffic and
/// nothing else (`default = "deny"`), with per-agent blocks for agent traffic and the
/// `ALLOWED_DOMAINS` line for the rest.
pub fn suggest(record: &str) -> Result<String, String> {
    let mut entries = BTreeSet::new();
    for (i, line) in record.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let seen: Seen = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not a learn record: {e}", i + 1))?;
        entries.insert(seen);
    }
    // (agent, host) → method → paths; CONNECT-only hosts still get into the allowlist.
    type Paths = BTreeMap<String, BTreeSet<String>>;
    let mut by_scope: BTreeMap<Option<String>, BTreeMap<String, Paths>> = BTreeMap::new();
    let mut clients: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ports = BTreeSet::new();
    for e in &entries {
        let hosts = by_scope.entry(e.agent.clone()).or_default();
        let methods = hosts.entry(e.host.clone()).or_default();
        if e.method != "CONNECT" && !e.path.contains("(unsafe path)") {
            methods
                .entry(e.method.clone())
                .or_default()
                .insert(e.path.clone());
        }
        if let Some(a) = &e.agent {
            clients
                .entry(a.clone())
                .or_default()
                .insert(e.client.clone());
        }
        if e.port != 443 && e.port != 80 {
            ports.insert(e.port.to_string());
        }
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let list = |items: &mut dyn Iterator<Item = String>| {
        items.map(|s| q(&s)).collect::<Vec<_>>().join(", ")
    };
    let mut out = String::from(
        "# Suggested by `paude-proxy policy suggest`: allows exactly the recorded traffic.\n\
         # Review it: every `*` stands for a segment that looked like an id or a hash.\n",
    );
    if let Some(global) = by_scope.get(&None) {
        out.push_str(&format!(
            "# ALLOWED_DOMAINS={}\n",
            global.keys().cloned().collect::<Vec<_>>().join(",")
        ));
    }
    if !ports.is_empty() {
        out.push_str(&format!(
            "# ALLOWED_OTEL_PORTS={}\n",
            ports.into_iter().collect::<Vec<_>>().join(",")
        ));
    }
    out.push_str("default = \"deny\"\n");
    let mut n = 0;
    let mut agent_rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (scope, hosts) in &by_scope {
        for (host, methods) in hosts {
            for (method, paths) in methods {
                n += 1;
                let id = format!("learned-{n}");
                out.push_str(&format!(
                    "\n[[rule]]\nid = {}\nhosts = [{}]\nmethods = [{}]\npaths = [{}]\naction = \"allow\"\n",
                    q(&id),
                    q(host),
                    q(method),
                    list(&mut paths.iter().cloned())
                ));
                if let Some(a) = scope {
                    agent_rules.entry(a.clone()).or_default().push(id);
                }
            }
        }
    }
    for (scope, hosts) in &by_scope {
        let Some(agent) = scope else { continue };
        let ids = agent_rules.remove(agent).unwrap_or_default();
        out.push_str(&format!(
            "\n[[agent]]\nname = {}\nclients = [{}]\nallowed_domains = [{}]\nrules = [{}]\n",
            q(agent),
            list(&mut clients.get(agent).into_iter().flatten().cloned()),
            list(&mut hosts.keys().cloned()),
            list(&mut ids.into_iter())
        ));
    }
    // Global rules must not leak to agents: agents list theirs explicitly above, and a
    // global rule never names an agent's rule, so the file is self-consistent.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_collapse_ids_and_keep_words() {
        for (p, want) in [
            ("/repos/octo/hello/pulls/1234", "/repos/octo/hello/pulls/*"),
            ("/v1/files/file-abc123def456ghi789jk", "/v1/files/*"),
            (
                "/objects/3f786850e387550fdab836ed7e6dc881de23001b",
                "/objects/*",
            ),
            ("/u/123e4567-e89b-12d3-a456-426614174000/x", "/u/*/x"),
            ("/v1/models", "/v1/models"),
            ("/o/r.git/info/refs", "/o/r.git/info/refs"),
            ("//a/./b/../c", "/a/c"),
            ("/a%2fb", "/(unsafe path)"),
        ] {
            assert_eq!(path_shape(p), want, "{p}");
        }
    }

    #[test]
    fn suggestion_parses_and_allows_exactly_the_record() {
        let seen = |agent: Option<&str>, client: &str, host: &str, method: &str, path: &str| Seen {
            agent: agent.map(str::to_string),
            client: client.into(),
            host: host.into(),
            port: 443,
            method: method.into(),
            path: path.into(),
        };
        let record: String = [
            seen(
                None,
                "10.0.0.5",
                "api.github.com",
                "GET",
                "/repos/o/r/pulls/*",
            ),
            seen(None, "10.0.0.5", "api.github.com", "GET", "/user"),
            seen(None, "10.0.0.5", "example.com", "CONNECT", ""),
            seen(
                Some("a1"),
                "10.200.0.2",
                "api.example.test",
                "POST",
                "/v1/chat/completions",
            ),
        ]
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
        let text = suggest(&record).unwrap();
        assert!(
            text.contains("# ALLOWED_DOMAINS=api.github.com,example.com"),
            "{text}"
        );
        let p = crate::policy::file::parse(&text, &|_| false).unwrap();
        assert_eq!(p.default, crate::policy::Action::Deny);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.agents.len(), 1);
        assert_eq!(p.agents[0].rules.len(), 1);
        assert!(suggest("{not json").is_err());
    }
}
