//! `paude-proxy routes [--vars]`: the credential variables the routing table names (the
//! embedded one, or PAUDE_PROXY_CREDENTIALS_CONFIG), so that wrappers such as
//! `paude-netns exec` build an agent's environment from the same table the proxy uses.

use std::fmt::Write as _;

use crate::config::{Args, ConfigError, read_credentials_json};
use crate::credential::Holds;
use crate::inject::{RoutesError, parse_table};

const VAR: &str = "PAUDE_PROXY_CREDENTIALS_CONFIG";

/// Prints the table. `--vars`: one `HOLDS NAME` line per variable, HOLDS being `value` (give
/// the agent a dummy), `path` (a file path: a stub file or nothing, never a dummy string) or
/// `unset` (never in the agent). Without it, a table for people.
pub fn print(args: &Args, vars: bool) -> Result<(), ConfigError> {
    let (json, shown) = read_credentials_json(args.credentials_config.as_ref())?;
    let declared = declared_vars(&json).map_err(|e| ConfigError {
        var: VAR,
        value: shown,
        problem: e.to_string(),
    })?;
    print!("{}", render(&declared, vars));
    Ok(())
}

/// What a credential variable holds, as wrappers must treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarHolds {
    /// The secret itself: the agent gets a dummy string.
    Value,
    /// The path of a file holding the secret: the agent gets a stub file or nothing, never a
    /// dummy string (an SDK would try to open it).
    Path,
    /// A secret the agent must not hold at all, not even as a dummy.
    Nothing,
}

impl VarHolds {
    /// The word `paude-proxy routes --vars` prints.
    pub fn word(self) -> &'static str {
        match self {
            VarHolds::Value => "value",
            VarHolds::Path => "path",
            VarHolds::Nothing => "unset",
        }
    }
}

/// One variable a routing table names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredVar {
    pub name: String,
    pub holds: VarHolds,
    /// The domain patterns of its entry, as written (empty for a provider's extra variables).
    pub domains: Vec<String>,
}

/// Every variable a routing table names, with what it holds, in table order without
/// duplicates. Reads no environment: it describes the table, not the credentials.
pub fn declared_vars(json: &str) -> Result<Vec<DeclaredVar>, RoutesError> {
    let mut out: Vec<DeclaredVar> = Vec::new();
    let mut push = |name: &str, holds: VarHolds, domains: Vec<String>| {
        if !out.iter().any(|v| v.name == name) {
            out.push(DeclaredVar {
                name: name.to_string(),
                holds,
                domains,
            });
        }
    };
    for entry in parse_table(json)? {
        let holds = match entry.holds {
            Holds::Value => VarHolds::Value,
            Holds::Path => VarHolds::Path,
        };
        let domains = entry
            .matcher
            .domains
            .iter()
            .map(|d| d.to_string())
            .collect();
        push(&entry.env_var, holds, domains);
        let extra = crate::providers::kind(&entry.kind).map_or(&[][..], |k| k.also_reads);
        for var in extra {
            push(var, VarHolds::Nothing, Vec::new());
        }
    }
    Ok(out)
}

fn render(declared: &[DeclaredVar], vars: bool) -> String {
    let mut out = String::new();
    for v in declared {
        // Writing to a String cannot fail.
        let _ = if vars {
            writeln!(out, "{} {}", v.holds.word(), v.name)
        } else {
            let line = format!(
                "{:<32} {:<6} {}",
                v.name,
                v.holds.word(),
                v.domains.join(",")
            );
            writeln!(out, "{}", line.trim_end())
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::DEFAULT_CREDENTIALS_JSON;

    #[test]
    fn the_embedded_table_marks_the_adc_path_and_the_inline_adc() {
        let declared = declared_vars(DEFAULT_CREDENTIALS_JSON).expect("embedded table parses");
        let text = render(&declared, true);
        let want = [
            "path CHATGPT_AUTH_FILE",
            "unset PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE",
            "path ANTHROPIC_OAUTH_CREDS_FILE",
            "value CLAUDE_CODE_OAUTH_TOKEN",
            "value ANTHROPIC_API_KEY",
            "value OPENAI_API_KEY",
            "value CURSOR_API_KEY",
            "value GH_TOKEN",
            "path GOOGLE_APPLICATION_CREDENTIALS",
            "unset GCP_ADC_JSON",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
    }

    #[test]
    fn a_custom_table_is_read_without_any_environment_and_deduplicated() {
        let json = r#"{"credentials":[
            {"env_var":"MY_KEY","injector":"api_key","params":{"header_name":"x-k"},"domains":["a.test"]},
            {"env_var":"MY_KEY","injector":"bearer","domains":["b.test"]},
            {"env_var":"GIT_PAT","injector":"basic","params":{"username":"u"},"domains":["git.test"]}
        ]}"#;
        let declared = declared_vars(json).expect("parses");
        assert_eq!(render(&declared, true), "value MY_KEY\nvalue GIT_PAT\n");
        assert!(render(&declared, false).contains("a.test"));
    }

    #[test]
    fn an_unknown_injector_is_an_error_not_a_silent_skip() {
        let json = r#"{"credentials":[{"env_var":"K","injector":"magic","domains":["a.test"]}]}"#;
        let err = declared_vars(json).expect_err("unknown injector");
        assert!(
            err.to_string().contains("unknown injector 'magic'"),
            "{err}"
        );
    }
}
