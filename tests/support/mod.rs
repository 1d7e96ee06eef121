//! Shared harness for the integration tests: test PKI, recording upstreams, the proxy
//! launcher, clients (curl + Rust) and the secret-leak check. Every test builds its own
//! instances; nothing mutable is shared between tests.
//!
//! Each test binary uses a different subset, hence the dead_code allowance.
#![allow(dead_code)]

use std::time::Duration;

pub mod body;
pub mod client;
pub mod faulty;
pub mod h2;
pub mod pki;
pub mod proxy;
pub mod secrets;
pub mod sse;
pub mod upstream;
pub mod ws;

/// Upper bound for any single network wait; reaching it fails the test instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The common setup: a fresh test CA, a TLS upstream whose cert it signed, and a proxy builder
/// that trusts that CA and allows the upstream's random port.
pub async fn tls_lab() -> (pki::TestCa, upstream::Upstream, proxy::ProxyBuilder) {
    let ca = pki::TestCa::new("paude-proxy test upstream CA");
    let upstream = upstream::Upstream::https(&ca).await;
    let builder = proxy::ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port());
    (ca, upstream, builder)
}

/// `https://host:port/path` for the given upstream.
pub fn https_url(host: &str, port: u16, path: &str) -> String {
    format!("https://{}{path}", client::authority(host, port))
}

/// `http://host:port/path` for the given upstream.
pub fn http_url(host: &str, port: u16, path: &str) -> String {
    format!("http://{}{path}", client::authority(host, port))
}
