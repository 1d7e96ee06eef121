//! `paude-proxy policy check|explain|suggest`: the policy tools. Nothing here sends a byte
//! to the network; output is for people (and simple scripts: explain exits 1 on deny).

use std::fmt::Write;
use std::net::IpAddr;

use crate::config::{Args, Config, ConfigError, PolicyCommand, routes_from_args};
use crate::host::{DomainPattern, Host, parse_authority};
use crate::policy::{self, Action, Entry, Facts, RequestLine, RequestPolicy, Rule};

/// What the command printed and how it should exit.
pub struct Outcome {
    pub text: String,
    /// `false`: exit 1 (a denial for explain).
    pub ok: bool,
}

pub fn run(args: &Args, cmd: &PolicyCommand) -> Result<Outcome, ConfigError> {
    let env = |k: &str| std::env::var(k).ok();
    match cmd {
        PolicyCommand::Check { file } => {
            let routes = routes_from_args(args, &env)?;
            let policy = crate::config::load_policy(file, &routes)?;
            Ok(Outcome {
                text: summary(&file.display().to_string(), &policy, &routes),
                ok: true,
            })
        }
        PolicyCommand::Explain {
            client,
            method,
            url,
        } => {
            let config = Config::from_args(args.clone(), &env)?;
            explain(
                &config,
                client.unwrap_or(IpAddr::from([127, 0, 0, 1])),
                method,
                url,
            )
        }
        PolicyCommand::Suggest { file } => {
            let shown = file.display().to_string();
            let bad = |problem: String| ConfigError {
                var: "PAUDE_PROXY_LEARN",
                value: shown.clone(),
                problem,
            };
            let record =
                std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
            let text = crate::learn::suggest(&record).map_err(bad)?;
            Ok(Outcome { text, ok: true })
        }
    }
}

pub fn describe(p: &DomainPattern) -> String {
    match p {
        DomainPattern::Exact(h) => h.to_string(),
        DomainPattern::Suffix(h) => format!(".{h}"),
        DomainPattern::Regex(re) => format!("~{}", re.as_str()),
    }
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn rule_line(r: &Rule) -> String {
    let any = |v: Vec<String>| {
        if v.is_empty() {
            "*".to_string()
        } else {
            v.join(",")
        }
    };
    format!(
        "  {} {}: hosts {} methods {} paths {}{}",
        action(r.action),
        r.id,
        any(r.hosts.iter().map(describe).collect()),
        any(r.methods.clone()),
        any(r.paths.iter().map(|p| p.as_str().to_string()).collect()),
        r.reason
            .as_deref()
            .map(|x| format!(" — {x}"))
            .unwrap_or_default()
    )
}

fn summary(file: &str, p: &RequestPolicy, routes: &crate::inject::Routes) -> String {
    let mut out = String::new();
    let available: Vec<&str> = routes.iter().map(|r| r.env_var.as_str()).collect();
    let all = if available.is_empty() {
        "every route (none available now)".to_string()
    } else {
        format!("every route ({})", available.join(", "))
    };
    let _ = writeln!(out, "policy OK: {file}");
    let _ = writeln!(out, "default: {}", action(p.default));
    let _ = writeln!(out, "rules ({}), first match wins:", p.rules.len());
    for r in p.rules.iter() {
        let _ = writeln!(out, "{}", rule_line(r));
    }
    let _ = writeln!(out, "agents ({}):", p.agents.len());
    for a in &p.agents {
        let _ = writeln!(out, "  {}:", a.name);
        let clients: Vec<String> = a.clients.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(out, "    clients: {}", clients.join(", "));
        let _ = writeln!(
            out,
            "    allowed_domains: {}",
            match &a.domains {
                None => "ALLOWED_DOMAINS".to_string(),
                Some(d) => d.iter().map(describe).collect::<Vec<_>>().join(", "),
            }
        );
        let _ = writeln!(
            out,
            "    credentials: {}",
            match &a.credentials {
                None => all.clone(),
                Some(c) if c.is_empty() => "none".to_string(),
                Some(c) => c.join(", "),
            }
        );
        let ids: Vec<&str> = a.rules.iter().map(|r| r.id.as_str()).collect();
        let _ = writeln!(
            out,
            "    rules: {}",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        );
        let _ = writeln!(out, "    default: {}", action(a.default));
    }
    let _ = writeln!(
        out,
        "other clients: ALLOWED_DOMAINS, {all}, every rule, default {}",
        action(p.default)
    );
    out
}

fn explain(
    config: &Config,
    client: IpAddr,
    method: &str,
    url: &str,
) -> Result<Outcome, ConfigError> {
    let bad = |problem: &str| ConfigError {
        var: "URL",
        value: url.to_string(),
        problem: problem.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let entry = match uri.scheme_str() {
        Some("https") => Entry::Tls,
        Some("http") => Entry::PlainHttp,
        _ => return Err(bad("expected an http:// or https:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("the URL has no host"))?;
    let (host, port): (Host, u16) = parse_authority(authority.as_str(), Some(entry.default_port()))
        .map_err(|e| bad(&e.to_string()))?;
    let policy = &config.policy;
    let facts = Facts {
        client,
        host: host.clone(),
        port,
        entry,
    };
    let line = RequestLine {
        method,
        path: uri.path(),
        query: uri.query(),
    };
    let mut out = String::new();
    let agent = policy.requests.agent(client);
    let verdict = policy::check_request(policy, &facts, &line);
    let _ = writeln!(out, "request: {method} {url} from {client}");
    let _ = writeln!(
        out,
        "agent: {}",
        agent
            .map(|a| a.name.as_str())
            .unwrap_or("(none: global policy)")
    );
    match policy::domain_entry(policy, client, &host) {
        Some(Some(p)) => {
            let source = if agent.is_some_and(|a| a.domains.is_some()) {
                "agent allowed_domains"
            } else {
                "ALLOWED_DOMAINS"
            };
            let _ = writeln!(out, "allowlist: {} ({source})", describe(p));
        }
        Some(None) => {
            let _ = writeln!(out, "allowlist: none set, every domain is allowed");
        }
        None => {
            let _ = writeln!(out, "allowlist: no entry matches {host}");
        }
    }
    let ok = match &verdict {
        Ok(by) => {
            let _ = writeln!(out, "decision: allow ({by})");
            true
        }
        Err(reason) => {
            let _ = writeln!(out, "decision: deny ({}): {reason}", reason.kind());
            false
        }
    };
    if ok && entry == Entry::Tls {
        // As if the client sent every header a route may require: the most it could get.
        let method = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
        let route =
            config
                .routes
                .select_assuming_client_headers(&host, &method, uri.path(), |var| {
                    policy::credential_allowed(policy, client, var)
                });
        let _ = writeln!(
            out,
            "credential: {}",
            route.map(|r| r.env_var.as_str()).unwrap_or("none")
        );
    }
    let _ = writeln!(
        out,
        "(not checked here: DNS and the address guard, which need a lookup)"
    );
    Ok(Outcome { text: out, ok })
}
