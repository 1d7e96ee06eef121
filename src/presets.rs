//! Agent presets for `ALLOWED_DOMAINS`: an `@name` entry expands, at parse time, to the
//! hosts one coding agent needs. Package registries are left to the user on purpose: which
//! ones an agent may reach is a policy choice, not a property of the agent.

use crate::host::split_list;

/// One curated list. Patterns use the `ALLOWED_DOMAINS` syntax.
#[derive(Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub what: &'static str,
    pub domains: &'static [&'static str],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "claude",
        what: "Claude Code: API, login and first-run onboarding, native installer and updates",
        domains: &[
            ".anthropic.com",
            "claude.ai",
            "claude.com",
            "platform.claude.com",
            "downloads.claude.ai",
        ],
    },
    Preset {
        name: "codex",
        what: "OpenAI Codex CLI: API, ChatGPT sign-in and the ChatGPT backend",
        domains: &[".openai.com", ".chatgpt.com"],
    },
    Preset {
        name: "gemini",
        what: "Gemini CLI: Gemini API, Code Assist, Google sign-in, Vertex AI",
        domains: &[
            "generativelanguage.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "oauth2.googleapis.com",
            "www.googleapis.com",
            "accounts.google.com",
            r"~^([a-z0-9-]+-)?aiplatform\.googleapis\.com$",
        ],
    },
    Preset {
        name: "cursor",
        what: "Cursor CLI and editor backend",
        domains: &[".cursor.com", ".cursor.sh", ".cursorapi.com"],
    },
    Preset {
        name: "github",
        what: "GitHub: web and git over HTTPS, API, archives, raw content",
        domains: &[
            "github.com",
            "api.github.com",
            "codeload.github.com",
            "uploads.github.com",
            ".githubusercontent.com",
        ],
    },
];

/// `list` with every `@name` replaced by its preset's patterns (comma-separated), and the
/// presets used, in order. An unknown name is an error naming the known ones.
pub fn expand(list: &str) -> Result<(String, Vec<&'static Preset>), String> {
    let mut out: Vec<&str> = Vec::new();
    let mut used: Vec<&'static Preset> = Vec::new();
    for item in split_list(list) {
        let Some(name) = item.strip_prefix('@') else {
            out.push(item);
            continue;
        };
        let preset = PRESETS
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown preset '{item}' (known: {})", known()))?;
        if !used.contains(&preset) {
            used.push(preset);
            out.extend_from_slice(preset.domains);
        }
    }
    Ok((out.join(","), used))
}

fn known() -> String {
    PRESETS
        .iter()
        .map(|p| format!("@{}", p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per preset used, for `--check-config`.
pub fn describe(used: &[&Preset]) -> Vec<String> {
    used.iter()
        .map(|p| format!("preset @{} ({}): {}", p.name, p.what, p.domains.join(",")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Host, parse_patterns};

    fn allows(list: &str, host: &str) -> bool {
        let (expanded, _) = expand(list).expect("expands");
        let host = Host::parse(host).expect("host");
        parse_patterns(&expanded)
            .expect("patterns")
            .iter()
            .any(|p| p.matches(&host))
    }

    #[test]
    fn every_preset_parses_and_covers_its_agents_hosts() {
        for p in PRESETS {
            let (expanded, used) = expand(&format!("@{}", p.name)).expect("expands");
            parse_patterns(&expanded).unwrap_or_else(|e| panic!("@{}: {e}", p.name));
            assert_eq!(used, vec![p]);
        }
        for host in [
            "api.anthropic.com",
            "statsig.anthropic.com",
            "claude.ai",
            "platform.claude.com",
            "downloads.claude.ai",
        ] {
            assert!(allows("@claude", host), "@claude: {host}");
        }
        for host in ["api.openai.com", "auth.openai.com", "chatgpt.com"] {
            assert!(allows("@codex", host), "@codex: {host}");
        }
        for host in [
            "generativelanguage.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "us-central1-aiplatform.googleapis.com",
            "aiplatform.googleapis.com",
        ] {
            assert!(allows("@gemini", host), "@gemini: {host}");
        }
        assert!(allows("@cursor", "api2.cursor.sh"));
        for host in ["github.com", "api.github.com", "raw.githubusercontent.com"] {
            assert!(allows("@github", host), "@github: {host}");
        }
    }

    #[test]
    fn presets_stay_narrow() {
        for host in [
            "evil-anthropic.com",
            "anthropic.com.evil.test",
            "storage.googleapis.com",
            "evil-aiplatform.googleapis.com.evil.test",
            "gist.github.com.evil.test",
            "registry.npmjs.org",
        ] {
            for p in PRESETS {
                assert!(
                    !allows(&format!("@{}", p.name), host),
                    "@{} allows {host}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn presets_mix_with_plain_entries_and_are_expanded_once() {
        let (expanded, used) = expand("registry.npmjs.org, @github,@GitHub ,.pypi.org").unwrap();
        assert_eq!(used.len(), 1);
        assert!(expanded.starts_with("registry.npmjs.org,github.com,"));
        assert!(expanded.ends_with(",.githubusercontent.com,.pypi.org"));
        assert_eq!(expanded.matches("api.github.com").count(), 1);
    }

    #[test]
    fn an_unknown_preset_names_the_known_ones() {
        let err = expand("@claude,@nope").unwrap_err();
        assert_eq!(
            err,
            "unknown preset '@nope' (known: @claude, @codex, @gemini, @cursor, @github)"
        );
        let describe = describe(&expand("@codex").unwrap().1);
        assert_eq!(describe.len(), 1);
        assert!(describe[0].starts_with("preset @codex ("), "{describe:?}");
    }
}
