//! The policy file (`PAUDE_PROXY_POLICY`, TOML): parsed once into a [`RequestPolicy`], with
//! every problem reported as `line N: what is wrong`. Unknown keys are errors, so a typo
//! (`mehtods`) never silently widens a rule.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::pattern::PathPattern;
use super::rules::{Action, Agent, RequestPolicy, Rule, RuleSet};
use crate::host::DomainPattern;

/// A problem in the file, at a line (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSchema>>,
    #[serde(default)]
    agent: Vec<Spanned<AgentSchema>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSchema {
    id: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    action: Spanned<String>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSchema {
    name: Option<String>,
    clients: Vec<Spanned<String>>,
    allowed_domains: Option<Vec<Spanned<String>>>,
    credentials: Option<Vec<Spanned<String>>>,
    rules: Option<Vec<Spanned<String>>>,
    default: Option<Spanned<String>>,
}

/// Parses a policy file. `known_credential` says whether a variable name is a credential
/// route of the credentials config (available or not), so a typo in `credentials` is caught.
pub fn parse(
    text: &str,
    known_credential: &dyn Fn(&str) -> bool,
) -> Result<RequestPolicy, PolicyError> {
    let at = |span: std::ops::Range<usize>, problem: String| PolicyError {
        line: line_of(text, span.start),
        problem,
    };
    let file: FileSchema = toml::from_str(text).map_err(|e| PolicyError {
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
        problem: e.message().trim().replace('\n', " "),
    })?;
    let default = match &file.default {
        Some(d) => action(d).map_err(|p| at(d.span(), p))?,
        None => Action::Allow,
    };
    let mut rules = Vec::with_capacity(file.rule.len());
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in &file.rule {
        let rule = compile_rule(r.get_ref()).map_err(|(span, p)| at(span, p))?;
        if by_id.insert(rule.id.clone(), rules.len()).is_some() {
            return Err(at(
                r.get_ref().id.span(),
                format!("rule id '{}' is defined twice", rule.id),
            ));
        }
        rules.push(Arc::new(rule));
    }
    let mut agents = Vec::new();
    for (n, a) in file.agent.iter().enumerate() {
        let spec = a.get_ref();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("agent-{}", n + 1));
        if spec.clients.is_empty() {
            return Err(at(
                a.span(),
                format!("[[agent]] {name}: 'clients' is empty"),
            ));
        }
        let clients = spec
            .clients
            .iter()
            .map(|c| {
                parse_net(c.get_ref()).ok_or_else(|| {
                    at(
                        c.span(),
                        format!(
                            "'{}' is not an IP address or CIDR like 10.200.0.2/32",
                            c.get_ref()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let domains = match &spec.allowed_domains {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|d| {
                        DomainPattern::parse(d.get_ref())
                            .map_err(|e| at(d.span(), format!("allowed_domains: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let credentials = match &spec.credentials {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|c| {
                        if known_credential(c.get_ref()) {
                            Ok(c.get_ref().clone())
                        } else {
                            Err(at(
                                c.span(),
                                format!(
                                    "credentials: '{}' is not a credential route (env_var) of the credentials config",
                                    c.get_ref()
                                ),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let own_rules = match &spec.rules {
            None => rules.clone(),
            Some(ids) => ids
                .iter()
                .map(|id| match by_id.get(id.get_ref()) {
                    Some(&i) => Ok(rules[i].clone()),
                    None => Err(at(
                        id.span(),
                        format!("rules: no [[rule]] has id '{}'", id.get_ref()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let default = match &spec.default {
            Some(d) => action(d).map_err(|p| at(d.span(), p))?,
            None => default,
        };
        agents.push(Agent {
            name,
            clients,
            domains,
            credentials,
            rules: RuleSet::new(own_rules).map_err(|p| at(a.span(), p))?,
            default,
        });
    }
    Ok(RequestPolicy {
        default,
        rules: RuleSet::new(rules).map_err(|p| PolicyError {
            line: 1,
            problem: p,
        })?,
        agents,
    })
}

type SpannedError = (std::ops::Range<usize>, String);

fn compile_rule(r: &RuleSchema) -> Result<Rule, SpannedError> {
    let id = r.id.get_ref().trim().to_string();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err((
            r.id.span(),
            format!("rule id '{id}': use letters, digits and - _ . : only"),
        ));
    }
    let hosts = r
        .hosts
        .iter()
        .map(|h| {
            DomainPattern::parse(h.get_ref())
                .map_err(|e| (h.span(), format!("rule '{id}': hosts: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let methods = r
        .methods
        .iter()
        .map(|m| {
            let v = m.get_ref().trim();
            // RFC 9110 §9.1: a method is a token.
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                Err((
                    m.span(),
                    format!("rule '{id}': '{v}' is not an HTTP method"),
                ))
            } else {
                Ok(v.to_ascii_uppercase())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let paths = r
        .paths
        .iter()
        .map(|p| {
            PathPattern::parse(p.get_ref()).map_err(|e| (p.span(), format!("rule '{id}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        action: action(&r.action).map_err(|p| (r.action.span(), format!("rule '{id}': {p}")))?,
        id,
        hosts,
        methods,
        paths,
        reason: r.reason.clone(),
    })
}

fn action(raw: &Spanned<String>) -> Result<Action, String> {
    match raw.get_ref().as_str() {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        other => Err(format!("'{other}' is not \"allow\" or \"deny\"")),
    }
}

fn parse_net(raw: &str) -> Option<IpNet> {
    crate::config::parse_net(raw.trim())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's example, verbatim in meaning.
    pub(crate) const SAMPLE: &str = r#"
default = "allow"

[[rule]]
id = "github-read-only"
hosts = ["api.github.com"]
methods = ["GET", "HEAD"]
action = "allow"

[[rule]]
id = "github-no-writes"
hosts = ["api.github.com"]
action = "deny"
reason = "the GitHub API is read-only from the sandbox"

[[rule]]
id = "no-push"
hosts = ["github.com"]
paths = ["/**/git-receive-pack", "/**/info/refs?service=git-receive-pack"]
action = "deny"
reason = "pushing from the sandbox is not allowed"

[[agent]]
clients = ["10.200.0.2/32"]
allowed_domains = [".example.test", "api.github.com"]
credentials = ["EXAMPLE_API_KEY", "GH_TOKEN"]
rules = ["github-read-only", "github-no-writes"]
"#;

    fn known(v: &str) -> bool {
        ["EXAMPLE_API_KEY", "GH_TOKEN", "OTHER_API_KEY"].contains(&v)
    }

    #[test]
    fn sample_parses() {
        let p = parse(SAMPLE, &known).unwrap();
        assert_eq!(p.default, Action::Allow);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.agents.len(), 1);
        let a = &p.agents[0];
        assert_eq!(a.name, "agent-1");
        assert_eq!(a.rules.len(), 2);
        assert_eq!(
            a.credentials.as_deref(),
            Some(&["EXAMPLE_API_KEY".to_string(), "GH_TOKEN".into()][..])
        );
        assert_eq!(a.domains.as_ref().map(Vec::len), Some(2));
        assert!(p.agent("10.200.0.2".parse().unwrap()).is_some());
        assert!(p.agent("::ffff:10.200.0.2".parse().unwrap()).is_some());
        assert!(p.agent("10.200.0.3".parse().unwrap()).is_none());
        assert!(parse("", &known).unwrap().rules.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("default = \"maybe\"", 1, "not \"allow\" or \"deny\""),
            (
                "[[rule]]\nid = \"a\"\nmehtods = [\"GET\"]\naction = \"deny\"",
                3,
                "mehtods",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"deny\"\nhosts = [\"bad host\"]",
                4,
                "hosts",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"deny\"\npaths = [\"nope\"]",
                4,
                "must start with '/'",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"deny\"\nhosts = [\"~(\"]",
                4,
                "regex",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"deny\"\nmethods = [\"G T\"]",
                4,
                "not an HTTP method",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"block\"",
                3,
                "not \"allow\"",
            ),
            (
                "[[rule]]\nid = \"a\"\naction = \"deny\"\n[[rule]]\nid = \"a\"\naction = \"deny\"",
                5,
                "twice",
            ),
            (
                "[[agent]]\nclients = [\"10.0.0.1\"]\ncredentials = [\"NOPE\"]",
                3,
                "NOPE",
            ),
            (
                "[[agent]]\nclients = [\"10.0.0.1\"]\nrules = [\"missing\"]",
                3,
                "missing",
            ),
            ("[[agent]]\nclients = [\"10.0.0.300\"]", 2, "CIDR"),
            (
                "[[agent]]\nclients = [\"10.0.0.1\"]\nallowed_domains = [\"a b\"]",
                3,
                "allowed_domains",
            ),
            (
                "[[agent]]\nclients = [\"10.0.0.1\"]\ncolour = 1",
                3,
                "colour",
            ),
            ("[[agent]]\nallowed_domains = []", 1, "clients"),
            ("default = \"allow\"\nnot toml at all", 2, ""),
            ("[[rule]]\nid = \"a\"", 1, "action"),
        ];
        for (text, line, needle) in cases {
            let e = match parse(text, &known) {
                Err(e) => e,
                Ok(_) => panic!("should fail: {text}"),
            };
            assert_eq!(e.line, *line, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
