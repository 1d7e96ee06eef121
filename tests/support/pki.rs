//! Test PKI made at test time: a CA per test, leaf certificates for upstream servers, and the
//! rustls configs that trust them. Nothing here is written to disk unless a test asks for it,
//! so tests never share key material.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Every name the default upstream certificate covers. Tests map these names to 127.0.0.1 in
/// the proxy's hosts file, so no test ever makes the proxy resolve a name through real DNS.
pub const UPSTREAM_NAMES: &[&str] = &[
    "api.openai.com",
    "openai.com",
    "evil-openai.com",
    "api.openai.com.evil-openai.com",
    "api.anthropic.com",
    "github.com",
    "api.github.com",
    "gist.github.com",
    "raw.githubusercontent.com",
    "api2.cursor.com",
    "api.cursorapi.com",
    "ok.test",
    "git.ok.test",
    "api.ok.test",
    "api1.ok.test",
    "api42.ok.test",
    "xapi1.ok.test",
    "other.test",
    "127.0.0.1",
];

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that signs leaves for test upstreams.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "paude-proxy tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
        }
    }

    /// Wraps an existing CA (for example the proxy's own `ca.crt` + `ca.key`) so a test can
    /// sign an upstream certificate with it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Self {
        let key = KeyPair::from_pem(key_pem).expect("parse CA key (PKCS#8 PEM expected)");
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).expect("parse CA certificate");
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("CA cert DER");
        TestCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).expect("write CA cert");
    }

    /// A server leaf for `names` (DNS names or IP literals), with its own fresh key.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_der: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        }
    }

    /// Root store containing only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("add test CA root");
        roots
    }
}

/// A leaf certificate and its private key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl Leaf {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// TLS server config for an upstream; offers h2 and http/1.1 so HTTP/2 tests can reuse it.
pub fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    server_config_with_alpn(leaf, &[b"h2", b"http/1.1"])
}

/// TLS server config offering exactly `alpn` (e.g. only http/1.1 to force an HTTP/1 upstream).
pub fn server_config_with_alpn(leaf: &Leaf, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der())
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS client config trusting exactly the CA certificates in `ca_pem` (e.g. the proxy's
/// `ca.crt`), offering the given ALPN protocols.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The rustls server name for a host string (DNS name or IP literal).
pub fn server_name(host: &str) -> rustls::pki_types::ServerName<'static> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return rustls::pki_types::ServerName::IpAddress(ip.into());
    }
    rustls::pki_types::ServerName::try_from(host.to_owned()).expect("valid server name")
}
