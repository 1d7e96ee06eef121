//! Request rules compiled for lookup: each rule is filed under the hosts it names (exact
//! names in one map, suffixes in another, regexes in one `RegexSet`), so a request only
//! looks at the rules for its own host, whatever the total. First match in file order wins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use regex::{RegexSet, RegexSetBuilder};

use super::path::NormPath;
use super::pattern::PathPattern;
use crate::host::{DomainPattern, Host};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One `[[rule]]`. Empty `hosts`, `methods` or `paths` means "any".
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub hosts: Vec<DomainPattern>,
    /// Upper-case.
    pub methods: Vec<String>,
    pub paths: Vec<PathPattern>,
    pub action: Action,
    pub reason: Option<String>,
}

impl Rule {
    /// Method and path only; the host was matched by the index.
    fn matches_request(&self, method: &str, path: &NormPath) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }
}

/// Rules in file order plus the host index over them.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    exact: HashMap<Box<str>, Vec<u32>>,
    suffix: HashMap<Box<str>, Vec<u32>>,
    regex: Option<RegexSet>,
    /// Rule index of each pattern in `regex`.
    regex_rules: Vec<u32>,
    any_host: Vec<u32>,
}

impl RuleSet {
    /// Compiles `rules` (in file order). Fails only if the combined regex set is too large.
    pub fn new(rules: Vec<Arc<Rule>>) -> Result<RuleSet, String> {
        let mut set = RuleSet::default();
        let mut regexes = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| "too many rules".to_string())?;
            if rule.hosts.is_empty() {
                set.any_host.push(i);
            }
            for h in &rule.hosts {
                match h {
                    DomainPattern::Exact(h) => {
                        set.exact.entry(h.as_str().into()).or_default().push(i)
                    }
                    DomainPattern::Suffix(h) => {
                        set.suffix.entry(h.as_str().into()).or_default().push(i)
                    }
                    DomainPattern::Regex(re) => {
                        regexes.push(re.as_str().to_string());
                        set.regex_rules.push(i);
                    }
                }
            }
        }
        if !regexes.is_empty() {
            set.regex = Some(
                RegexSetBuilder::new(&regexes)
                    .case_insensitive(true)
                    // Bounded like a single ALLOWED_DOMAINS regex, times a margin for many.
                    .size_limit(64 << 20)
                    .build()
                    .map_err(|e| format!("host regexes do not compile together: {e}"))?,
            );
        }
        set.rules = rules;
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| r.as_ref())
    }

    /// The first rule (file order) that matches, if any.
    pub fn first_match(&self, host: &Host, method: &str, path: &NormPath) -> Option<&Rule> {
        let mut candidates: Vec<u32> = Vec::new();
        candidates.extend_from_slice(&self.any_host);
        if let Some(v) = self.exact.get(host.as_str()) {
            candidates.extend_from_slice(v);
        }
        if !self.suffix.is_empty() && host.ip().is_none() {
            // Every label boundary of the host: `a.b.c` looks up `a.b.c`, `b.c`, `c`.
            let name = host.as_str();
            let mut rest = name;
            loop {
                if let Some(v) = self.suffix.get(rest) {
                    candidates.extend_from_slice(v);
                }
                match rest.split_once('.') {
                    Some((_, r)) => rest = r,
                    None => break,
                }
            }
        } else if let Some(v) = self.suffix.get(host.as_str()) {
            candidates.extend_from_slice(v);
        }
        if let Some(set) = &self.regex {
            candidates.extend(
                set.matches(host.as_str())
                    .iter()
                    .map(|i| self.regex_rules[i]),
            );
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|i| self.rules.get(i as usize))
            .find(|r| r.matches_request(method, path))
            .map(|r| r.as_ref())
    }
}

/// One `[[agent]]`: a policy for the clients it lists.
#[derive(Clone, Debug)]
pub struct Agent {
    /// `name` from the file, or `agent-N` (1-based, file order).
    pub name: String,
    pub clients: Vec<IpNet>,
    /// `Some`: replaces `ALLOWED_DOMAINS` for these clients.
    pub domains: Option<Vec<DomainPattern>>,
    /// `Some`: the only credential routes (by variable name) these clients may use.
    pub credentials: Option<Vec<String>>,
    pub rules: RuleSet,
    pub default: Action,
}

/// Everything the policy file says.
#[derive(Clone, Debug)]
pub struct RequestPolicy {
    pub default: Action,
    pub rules: RuleSet,
    pub agents: Vec<Agent>,
}

impl Default for RequestPolicy {
    /// No file: every request the connection-level checks admit is allowed, as before.
    fn default() -> Self {
        RequestPolicy {
            default: Action::Allow,
            rules: RuleSet::default(),
            agents: Vec::new(),
        }
    }
}

impl RequestPolicy {
    /// The first `[[agent]]` (file order) that lists `client`.
    pub fn agent(&self, client: IpAddr) -> Option<&Agent> {
        let client = client.to_canonical();
        self.agents
            .iter()
            .find(|a| a.clients.iter().any(|n| n.contains(&client)))
    }
}
