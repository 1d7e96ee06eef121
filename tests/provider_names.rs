//! The generic modules name no provider: `grep -rlE 'gcloud|google|anthropic|chatgpt|openai'
//! src/` lists only the provider folders, the embedded routing table and the config/help
//! text (presets, the `ca` subcommand's help naming the gcloud CLI's CA variable).

use std::fs;
use std::path::{Path, PathBuf};

const NAMES: &[&str] = &["gcloud", "google", "anthropic", "chatgpt", "openai"];

/// Paths under src/ that may name a provider (a trailing `/` is a whole folder).
const ALLOWED: &[&str] = &["providers/", "credentials.json", "presets.rs", "cli/ca.rs"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn only_providers_table_and_help_text_name_a_provider() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(all.len() > 20, "src/ was not found: {all:?}");
    let mut offenders = Vec::new();
    for path in all {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = String::from_utf8_lossy(&fs::read(&path).expect("read file")).into_owned();
        // Case-sensitive, like the grep of the acceptance criterion.
        let named: Vec<&str> = NAMES.iter().copied().filter(|n| text.contains(n)).collect();
        let allowed = ALLOWED.iter().any(|a| {
            if a.ends_with('/') {
                rel.starts_with(a)
            } else {
                rel == *a
            }
        });
        if !named.is_empty() && !allowed {
            offenders.push(format!("src/{rel}: {named:?}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "generic modules name a provider (use neutral test hosts such as api.example.test, \
         or move the code into src/providers/): {offenders:#?}"
    );
}
