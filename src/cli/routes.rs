//! `paude-proxy routes [--vars]`: the credential variables the routing table names (the
//! embedded one, or PAUDE_PROXY_CREDENTIALS_CONFIG), so that wrappers such as
//! `paude-netns exec` build an agent's environment from the same table the proxy uses.

use std::fmt::Write as _;

use crate::config::{Args, ConfigError, read_credentials_json};
use crate::inject::{DeclaredVar, declared_vars};

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
        for line in [
            "value ANTHROPIC_API_KEY",
            "value OPENAI_API_KEY",
            "value CURSOR_API_KEY",
            "value GH_TOKEN",
            "path GOOGLE_APPLICATION_CREDENTIALS",
            "unset GCP_ADC_JSON",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert_eq!(text.lines().count(), 6, "{text}");
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
