//! The one embedded routing table against everything that describes it: the README's
//! credentials table, `--help`, and `paude-netns exec`'s default list of dummy variables and
//! its stub files. None can drift from the table without this test failing.

use paude_proxy::credential::Holds;
use paude_proxy::inject::{DEFAULT_CREDENTIALS_JSON, Entry, Format, Placement, parse_table};

const START: &str = "<!-- credentials-table:start (generated: tests/credentials_table.rs) -->";
const END: &str = "<!-- credentials-table:end -->";

fn table() -> Vec<Entry> {
    parse_table(DEFAULT_CREDENTIALS_JSON).expect("embedded table parses")
}

fn code_list(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn header_of(e: &Entry) -> String {
    let h = e.injector.header.as_str();
    let main = match (&e.injector.format, h) {
        (Format::Bare, h) => format!("`{h}: <key>`"),
        (Format::Bearer, "authorization") => "`Authorization: Bearer <token>`".to_string(),
        (Format::Bearer, h) => format!("`{h}: Bearer <token>`"),
        (Format::Basic { username }, _) => format!("`Authorization: Basic {username}:<token>`"),
    };
    let also: Vec<String> = e.injector.also_owns.iter().map(|h| h.to_string()).collect();
    match (e.injector.placement, also.is_empty()) {
        (_, true) => main,
        (Placement::AsClient, false) => {
            format!("{main} or `Authorization: Bearer <key>`, as the client sent it")
        }
        (Placement::Default, false) => {
            format!("{main}; the client's {} is removed", code_list(also))
        }
    }
}

fn when_of(e: &Entry) -> String {
    let m = &e.matcher;
    let mut parts = Vec::new();
    if let Some(p) = &m.path_prefix {
        parts.push(format!("path under `{p}`"));
    }
    if let Some(ms) = &m.methods {
        parts.push(format!(
            "methods {}",
            code_list(ms.iter().map(|m| m.to_string()))
        ));
    }
    if m.require_client_header {
        parts.push("only if the client sent the header".to_string());
    }
    if parts.is_empty() {
        "always".into()
    } else {
        parts.join("; ")
    }
}

/// The README block, rendered from the table.
fn rendered() -> String {
    let mut out = format!(
        "{START}\n| Variable (holds) | Injector | Domains | When | Header |\n|---|---|---|---|---|\n"
    );
    for e in table() {
        let holds = match e.holds {
            Holds::Value => "value",
            Holds::Path => "file path",
        };
        let domains = code_list(e.matcher.domains.iter().map(|d| format!("{d}")));
        out.push_str(&format!(
            "| `{}` ({holds}) | `{}` | {domains} | {} | {} |\n",
            e.env_var,
            e.kind,
            when_of(&e),
            header_of(&e)
        ));
    }
    out.push_str(END);
    out
}

#[test]
fn the_readme_table_is_the_embedded_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (Some(a), Some(b)) = (readme.find(START), readme.find(END)) else {
        panic!(
            "README lacks the markers; put this block in:\n{}",
            rendered()
        );
    };
    let block = &readme[a..b + END.len()];
    assert_eq!(
        block,
        rendered(),
        "README credentials table is stale; replace it with:\n{}",
        rendered()
    );
}

#[test]
fn help_names_every_credential_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paude-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for e in table() {
        assert!(
            help.contains(&e.env_var),
            "--help does not name {}:\n{help}",
            e.env_var
        );
    }
}

fn script_file(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/scripts/lib/paude-netns/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn paude_netns_dummies_exactly_the_value_variables_and_stubs_the_path_ones() {
    // The script keeps no list of its own: it asks the binary, which reads the table.
    let env_sh = script_file("agent-env.sh");
    assert!(
        env_sh.contains("routes --vars"),
        "agent-env.sh must ask `paude-proxy routes --vars`"
    );
    assert!(
        !env_sh.contains("DEFAULT_CREDENTIAL_ENV_VARS"),
        "agent-env.sh must not keep a second list of credential variables"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paude-proxy"))
        .args(["routes", "--vars"])
        .env_remove("PAUDE_PROXY_CREDENTIALS_CONFIG")
        .output()
        .expect("run paude-proxy routes --vars");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let listed = |word: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{word} ")))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let of = |holds: Holds| -> Vec<String> {
        let mut v: Vec<String> = table()
            .into_iter()
            .filter(|e| e.holds == holds)
            .map(|e| e.env_var)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        listed("value"),
        of(Holds::Value),
        "dummies vs the table's value variables"
    );
    assert_eq!(
        listed("path"),
        of(Holds::Path),
        "stubs vs the table's path variables"
    );
    let stubs = script_file("agent-stubs.sh");
    for var in of(Holds::Path) {
        assert!(
            stubs.contains(&var) || env_sh.contains(&format!("\t{var})")),
            "paude-netns never stubs {var}"
        );
    }
}

/// The stubs the script installs are the JSON the binary prints.
#[test]
fn the_scripts_stubs_are_the_binarys() {
    let stubs = script_file("agent-stubs.sh");
    for (var, kind) in [("STUB_CLAUDE_JSON", "claude"), ("STUB_CODEX_JSON", "codex")] {
        let start = stubs.find(&format!("readonly {var}='")).expect(var) + var.len() + 11;
        let len = stubs[start..].find('\'').expect("closing quote");
        let in_script: serde_json::Value =
            serde_json::from_str(&stubs[start..start + len]).expect(var);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paude-proxy"))
            .args(["stub", kind])
            .output()
            .unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(in_script, printed, "{kind}");
    }
}
