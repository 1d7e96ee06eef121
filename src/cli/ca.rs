//! `paude-proxy ca env` and `ca bundle`: make clients trust the proxy CA. The one list of
//! "trust this CA file" variables lives here; `paude-netns exec` asks for it too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{Args, ConfigError, DEFAULT_CA_DIR, ListenAddr, parse_listen};

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CaCommand {
    /// Print the environment that makes common runtimes trust the proxy CA (and, unless
    /// --no-proxy, use the explicit proxy): `eval "$(paude-proxy ca env)"`.
    Env {
        /// CA file the variables point at; best a bundle from `ca bundle` (system roots plus
        /// the proxy CA) [default: $PAUDE_PROXY_CA_DIR/ca.crt].
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Also set SSL_CERT_DIR (OpenSSL hashed directory) to DIR.
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        /// Explicit proxy URL for HTTPS_PROXY and friends [default: from PAUDE_PROXY_LISTEN,
        /// e.g. http://127.0.0.1:3128].
        #[arg(long, conflicts_with = "no_proxy")]
        proxy: Option<String>,
        /// Leave the proxy variables out (transparent mode: paude-netns, pod mode).
        #[arg(long)]
        no_proxy: bool,
        /// `shell`: `export NAME='value'` lines; `plain`: `NAME=value` lines for scripts.
        #[arg(long, value_enum, default_value = "shell")]
        format: Format,
    },
    /// Write OUT: the system roots followed by the proxy CA, one PEM bundle.
    Bundle {
        /// Where to write the bundle (replaced atomically, mode 0644).
        out: PathBuf,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Shell,
    Plain,
}

/// Every variable a common runtime reads as "the CA file to trust", with who reads it. Some
/// were found the hard way: a system npmrc `cafile` overrides NODE_EXTRA_CA_CERTS unless
/// npm_config_cafile is set; httpx and the OpenAI SDK read SSL_CERT_FILE, not
/// REQUESTS_CA_BUNDLE.
pub const TRUST_VARS: &[(&str, &str)] = &[
    (
        "SSL_CERT_FILE",
        "OpenSSL, Go, Python ssl/httpx, Ruby, Rust native-certs",
    ),
    ("NODE_EXTRA_CA_CERTS", "Node.js"),
    ("npm_config_cafile", "npm (wins over a system npmrc cafile)"),
    ("YARN_HTTPS_CA_FILE_PATH", "Yarn 2+"),
    ("REQUESTS_CA_BUNDLE", "Python requests, pip"),
    ("PIP_CERT", "pip"),
    ("CURL_CA_BUNDLE", "curl"),
    ("GIT_SSL_CAINFO", "git"),
    ("CARGO_HTTP_CAINFO", "cargo"),
    ("DENO_CERT", "Deno"),
    ("AWS_CA_BUNDLE", "AWS SDKs and CLI"),
    ("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "gcloud CLI"),
    (
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "gRPC (Gemini CLI, Google SDKs)",
    ),
    ("HTTPLIB2_CA_CERTS", "httplib2"),
    ("NIX_SSL_CERT_FILE", "Nix"),
    ("CODEX_CA_CERTIFICATE", "Codex CLI"),
];

/// The explicit-proxy variables, both cases: wget, Python urllib and others read only the
/// lowercase ones, some Go and Java tools only the uppercase.
const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
/// Local addresses never go through the proxy (it would refuse them anyway).
const NO_PROXY_VALUE: &str = "localhost,127.0.0.1,::1";

/// Base64 characters per PEM line (RFC 7468).
const PEM_LINE: usize = 64;

pub fn run(command: &CaCommand, args: &Args) -> Result<(), ConfigError> {
    match command {
        CaCommand::Env {
            bundle,
            cert_dir,
            proxy,
            no_proxy,
            format,
        } => {
            let bundle = bundle.clone().unwrap_or_else(|| ca_cert_path(args));
            let proxy = if *no_proxy {
                None
            } else {
                Some(match proxy {
                    Some(p) => p.clone(),
                    None => default_proxy_url(&args.listen)?,
                })
            };
            let vars = env_vars(&bundle, cert_dir.as_deref(), proxy.as_deref());
            print!("{}", render(&vars, *format));
            Ok(())
        }
        CaCommand::Bundle { out } => write_bundle(&ca_cert_path(args), out),
    }
}

fn ca_cert_path(args: &Args) -> PathBuf {
    args.ca_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_DIR))
        .join("ca.crt")
}

/// `http://HOST:PORT` for the explicit listener, loopback when it binds all addresses.
fn default_proxy_url(listen: &str) -> Result<String, ConfigError> {
    let addr = match parse_listen("PAUDE_PROXY_LISTEN", listen)? {
        ListenAddr::AllInterfaces(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        ListenAddr::Addr(a) if a.ip().is_unspecified() => {
            let ip = match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, a.port())
        }
        ListenAddr::Addr(a) => a,
    };
    Ok(format!("http://{addr}"))
}

/// The variables, in a fixed order.
pub fn env_vars(
    bundle: &Path,
    cert_dir: Option<&Path>,
    proxy: Option<&str>,
) -> Vec<(String, String)> {
    let bundle = bundle.display().to_string();
    let mut out: Vec<(String, String)> = TRUST_VARS
        .iter()
        .map(|(name, _)| (name.to_string(), bundle.clone()))
        .collect();
    if let Some(dir) = cert_dir {
        out.push(("SSL_CERT_DIR".into(), dir.display().to_string()));
    }
    if let Some(url) = proxy {
        out.extend(PROXY_VARS.iter().map(|v| (v.to_string(), url.to_string())));
        out.push(("NO_PROXY".into(), NO_PROXY_VALUE.into()));
        out.push(("no_proxy".into(), NO_PROXY_VALUE.into()));
        // Node 24+ makes fetch() and https honour the variables above only with this.
        out.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    }
    out
}

fn render(vars: &[(String, String)], format: Format) -> String {
    let mut out = String::new();
    for (name, value) in vars {
        // Writing to a String cannot fail.
        let _ = match format {
            Format::Shell => writeln!(out, "export {name}='{}'", value.replace('\'', r"'\''")),
            Format::Plain => writeln!(out, "{name}={value}"),
        };
    }
    out
}

fn write_bundle(ca: &Path, out: &Path) -> Result<(), ConfigError> {
    let shown = ca.display().to_string();
    let bad = |problem: String| ConfigError {
        var: "PAUDE_PROXY_CA_DIR",
        value: shown.clone(),
        problem,
    };
    let ca_pem = std::fs::read_to_string(ca).map_err(|e| {
        bad(format!(
            "cannot read the proxy CA (start the proxy once to create it): {e}"
        ))
    })?;
    let parsed = CertificateDer::pem_slice_iter(ca_pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    if !matches!(parsed, Ok(ref certs) if !certs.is_empty()) {
        return Err(bad("ca.crt is not a PEM certificate".into()));
    }
    let native = rustls_native_certs::load_native_certs();
    let mut text = String::new();
    for cert in &native.certs {
        push_pem(&mut text, cert.as_ref());
    }
    if native.certs.is_empty() {
        eprintln!(
            "paude-proxy: warning: no system roots found; the bundle trusts only the proxy CA"
        );
    }
    text.push_str("# paude-proxy CA\n");
    text.push_str(ca_pem.trim_end());
    text.push('\n');
    let out_bad = |e: std::io::Error| ConfigError {
        var: "OUT",
        value: out.display().to_string(),
        problem: format!("cannot write the bundle: {e}"),
    };
    let tmp = out.with_extension("tmp-paude-proxy");
    let mut file = std::fs::File::create(&tmp).map_err(out_bad)?;
    file.write_all(text.as_bytes()).map_err(out_bad)?;
    drop(file);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(out_bad)?;
    std::fs::rename(&tmp, out).map_err(out_bad)?;
    eprintln!(
        "paude-proxy: wrote {} ({} system roots + the proxy CA)",
        out.display(),
        native.certs.len()
    );
    Ok(())
}

fn push_pem(out: &mut String, der: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(PEM_LINE) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_every_runtime_and_both_proxy_cases() {
        let vars = env_vars(Path::new("/b.pem"), None, Some("http://127.0.0.1:3128"));
        let text = render(&vars, Format::Plain);
        for name in [
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "npm_config_cafile",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "CODEX_CA_CERTIFICATE",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "AWS_CA_BUNDLE",
        ] {
            assert!(
                text.contains(&format!("\n{name}=/b.pem\n"))
                    || text.starts_with(&format!("{name}=/b.pem\n")),
                "{name}:\n{text}"
            );
        }
        for name in PROXY_VARS {
            assert!(
                text.contains(&format!("{name}=http://127.0.0.1:3128\n")),
                "{name}"
            );
        }
        let no_proxy = render(&env_vars(Path::new("/b.pem"), None, None), Format::Plain);
        assert!(
            !no_proxy.to_ascii_lowercase().contains("proxy="),
            "{no_proxy}"
        );
    }

    #[test]
    fn shell_format_quotes_every_value() {
        let vars = vec![("SSL_CERT_FILE".to_string(), "/it's $(here).pem".to_string())];
        assert_eq!(
            render(&vars, Format::Shell),
            "export SSL_CERT_FILE='/it'\\''s $(here).pem'\n"
        );
    }

    #[test]
    fn the_default_proxy_url_is_loopback_for_a_wildcard_listener() {
        assert_eq!(default_proxy_url(":3128").unwrap(), "http://127.0.0.1:3128");
        assert_eq!(
            default_proxy_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(default_proxy_url("[::]:3128").unwrap(), "http://[::1]:3128");
        assert_eq!(
            default_proxy_url("10.0.0.2:3128").unwrap(),
            "http://10.0.0.2:3128"
        );
        assert!(default_proxy_url("nope").is_err());
    }

    #[test]
    fn bundle_holds_the_system_roots_then_the_proxy_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let out = dir.path().join("bundle.pem");
        write_bundle(&ca, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.trim_end().ends_with(cert.pem().trim_end()),
            "proxy CA last"
        );
        let count = text.matches("BEGIN CERTIFICATE").count();
        assert_eq!(
            count,
            rustls_native_certs::load_native_certs().certs.len() + 1
        );
        std::fs::write(&ca, "not a cert").unwrap();
        assert!(write_bundle(&ca, &out).is_err());
    }
}
