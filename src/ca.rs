//! The proxy's CA: load or create it once, mint leaf certificates per host, cache them.

use std::fs;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::host::Host;

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
/// Leaves are backdated so a client whose clock runs a little behind still accepts them.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Re-mint well before expiry so a long-running proxy never serves an expired leaf.
const LEAF_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const LEAF_CACHE_CAPACITY: usize = 1024;
/// TLS sessions clients may resume, all leaves together. One store for every leaf: rustls
/// gives each `ServerConfig` its own by default, pre-allocated for 256 sessions (~26 KiB),
/// which a full leaf cache multiplied into ~26 MiB kept after a flood of distinct names.
/// Sharing is safe: rustls resumes a session only for the SNI it was made for.
const SESSION_CACHE_CAPACITY: usize = 4096;
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const CA_COMMON_NAME: &str = "paude-proxy CA";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create directory {0}: {1}")]
    CreateDir(PathBuf, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} exists but {1} is missing; restore it or remove both to create a new CA")]
    HalfPresent(PathBuf, PathBuf),
    #[error("{0} is not a PEM certificate the proxy can use: {1}")]
    BadCert(PathBuf, String),
    #[error(
        "{0} is not an unencrypted PKCS#8 private key (convert with `openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8`)"
    )]
    BadKey(PathBuf),
    #[error("{key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The CA and a leaf key shared by every leaf (generated at startup, never the CA key).
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_spki: Vec<u8>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    alpn: Vec<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cache: Mutex<LruCache<Host, (Arc<ServerConfig>, Instant)>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    minted: AtomicU64,
}

impl CertAuthority {
    /// Loads `ca.crt`/`ca.key` from `dir`, or creates them if neither exists. An existing
    /// CA is used byte for byte and never regenerated.
    pub fn load_or_create(dir: &Path) -> Result<CertAuthority, CaError> {
        fs::create_dir_all(dir).map_err(|e| CaError::CreateDir(dir.into(), e))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => create(&cert_path, &key_path)?,
            (true, false) => return Err(CaError::HalfPresent(cert_path, key_path)),
            (false, true) => return Err(CaError::HalfPresent(key_path, cert_path)),
        }
        let cert_pem = fs::read(&cert_path).map_err(|e| CaError::Read(cert_path.clone(), e))?;
        let key_pem =
            fs::read_to_string(&key_path).map_err(|e| CaError::Read(key_path.clone(), e))?;
        Self::from_pem(&cert_pem, &key_pem, &cert_path, &key_path)
    }

    /// Validates an existing CA without creating anything (`--check-config`). Returns
    /// `false` when there is none yet and one would be created.
    pub fn check(dir: &Path) -> Result<bool, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => Ok(false),
            _ => Self::load_or_create(dir).map(|_| true),
        }
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let bad_cert = |why: String| CaError::BadCert(cert_path.into(), why);
        let ca_der =
            CertificateDer::from_pem_slice(cert_pem).map_err(|e| bad_cert(e.to_string()))?;
        let ca_key = KeyPair::from_pem(key_pem).map_err(|_| CaError::BadKey(key_path.into()))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad_cert(e.to_string()))?;
        let ca_spki = parsed.tbs_certificate.subject_pki.raw.to_vec();
        if ca_spki != rcgen::PublicKeyData::subject_public_key_info(&ca_key) {
            return Err(CaError::Mismatch {
                cert: cert_path.into(),
                key: key_path.into(),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| bad_cert(e.to_string()))?;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = rustls::crypto::ring::sign::any_supported_type(&leaf_der)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(CertAuthority {
            issuer,
            ca_der,
            ca_spki,
            leaf_key,
            leaf_signer,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            provider: client_facing_provider(),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(LEAF_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_CAPACITY),
            minted: AtomicU64::new(0),
        })
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// DER of the CA's SubjectPublicKeyInfo: the upstream stage refuses any root with it.
    pub fn ca_spki(&self) -> &[u8] {
        &self.ca_spki
    }

    /// How many leaves were minted since startup (for tests and metrics).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// A TLS server config presenting a leaf for `host`. Concurrent first requests for one
    /// host mint once: the cache lock is held while minting, which costs one ECDSA
    /// signature (tens of microseconds).
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, CaError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cfg, at)) = cache.get(host)
            && at.elapsed() < LEAF_CACHE_TTL
        {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(self.mint(host)?);
        self.minted.fetch_add(1, Ordering::Relaxed);
        cache.put(host.clone(), (cfg.clone(), Instant::now()));
        Ok(cfg)
    }

    /// Bench only (`benches/leaf_cache.rs`): raises the cache capacity to `capacity` and fills
    /// it with `hosts`, every entry a clone of one minted config, so 100,000 entries cost one
    /// signature instead of 100,000 (tens of seconds). The hit path does not depend on what
    /// an entry holds: it hashes the host, promotes the entry, checks its age, clones an Arc.
    #[doc(hidden)]
    pub fn bench_fill(&self, capacity: usize, hosts: &[Host]) -> Result<(), CaError> {
        let Some(first) = hosts.first() else {
            return Ok(());
        };
        let cfg = Arc::new(self.mint(first)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.resize(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN));
        let now = Instant::now();
        for host in hosts {
            cache.put(host.clone(), (cfg.clone(), now));
        }
        Ok(())
    }

    fn mint(&self, host: &Host) -> Result<ServerConfig, CaError> {
        let certified = CertifiedKey::new(
            vec![self.leaf_der(host)?, self.ca_der.clone()],
            self.leaf_signer.clone(),
        );
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Sign(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
        // Our preference, not the client's: AES-128/SHA-256 first (see `client_facing_provider`).
        cfg.ignore_client_order = true;
        cfg.alpn_protocols = self.alpn.clone();
        cfg.session_storage = self.sessions.clone();
        Ok(cfg)
    }

    fn leaf_der(&self, host: &Host) -> Result<CertificateDer<'static>, CaError> {
        let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match host.ip() {
            Some(ip) => SanType::IpAddress(ip),
            None => SanType::DnsName(host.as_str().to_string().try_into().map_err(sign_err)?),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(sign_err)?;
        Ok(leaf.der().clone())
    }
}

/// ring with AES-128-GCM suites first. Clients usually prefer AES-256/SHA-384, but SHA-512
/// has no hardware support on common CPUs while SHA-256 does, and the handshake is most of
/// the proxy's cost per new connection (measured ~6%). Every suite stays available.
fn client_facing_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS13_AES_128_GCM_SHA256};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        let suite = s.suite();
        !(suite == TLS13_AES_128_GCM_SHA256 || suite == TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    });
    Arc::new(provider)
}

/// At least 64 random bits (we use 127), positive, as CAs are required to.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness left: fall back to the clock, still unique per mint.
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes.copy_from_slice(&nanos.to_be_bytes());
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // non-zero leading byte keeps the DER length fixed
    SerialNumber::from_slice(&bytes)
}

/// Presents one certificate whatever the SNI: the target comes from the CONNECT line or the
/// checked SNI, so the chosen leaf is already right.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn create(cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
    let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "paude-proxy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(sign_err)?;
    // Key first, created 0600 from the start, so there is no moment it is world-readable.
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!("created a new CA in {}", cert_path.display());
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |e| CaError::Write(path.into(), e);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // The umask may have removed bits from `mode` (0644 under umask 077); set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_fill_makes_every_host_a_hit_beyond_the_normal_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        let n = LEAF_CACHE_CAPACITY * 2;
        let hosts: Vec<Host> = (0..n)
            .map(|i| Host::parse(&format!("h{i}.example.com")).unwrap())
            .collect();
        ca.bench_fill(n, &hosts).unwrap();
        let minted = ca.minted();
        for host in [&hosts[0], &hosts[n / 2], &hosts[n - 1]] {
            ca.server_config(host).unwrap();
        }
        assert_eq!(ca.minted(), minted, "a filled host was minted again");
        ca.server_config(&Host::parse("new.example.com").unwrap())
            .unwrap();
        assert_eq!(ca.minted(), minted + 1);
    }

    #[test]
    fn creates_then_reuses_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let a = CertAuthority::load_or_create(dir.path()).unwrap();
        let crt1 = fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let key1 = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = CertAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join(CA_CERT_FILE)).unwrap(), crt1);
        assert_eq!(fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), key1);
        assert_eq!(a.ca_der(), b.ca_der());
    }

    #[test]
    fn leaf_has_the_required_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        let host = Host::parse("api.example.test").unwrap();
        let cfg = ca.server_config(&host).unwrap();
        assert!(
            Arc::ptr_eq(&cfg, &ca.server_config(&host).unwrap()),
            "cached"
        );
        assert_eq!(ca.minted(), 1);
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        for (name, want_san) in [
            ("api.example.test", "api.example.test"),
            ("10.1.2.3", "10.1.2.3"),
        ] {
            let der = ca.leaf_der(&Host::parse(name).unwrap()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert!(
                cert.tbs_certificate.raw_serial().len() >= 8,
                "serial >= 64 bits"
            );
            assert_ne!(
                cert.tbs_certificate.subject_pki.raw,
                ca.ca_spki(),
                "never the CA key"
            );
            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(!bc.ca, "CA:false");
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth);
            let san = cert.subject_alternative_name().unwrap().unwrap().value;
            let names: Vec<String> = san
                .general_names
                .iter()
                .map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
                    }
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(names, vec![want_san.to_string()]);
            let age =
                OffsetDateTime::now_utc().unix_timestamp() - cert.validity().not_before.timestamp();
            assert!(age >= 3500, "backdated about an hour, got {age}s");
        }
        let serial_a = ca.leaf_der(&host).unwrap();
        let serial_b = ca.leaf_der(&host).unwrap();
        assert_ne!(serial_a, serial_b, "random serials");
    }

    #[test]
    fn concurrent_first_requests_for_one_host_mint_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertAuthority::load_or_create(dir.path()).unwrap());
        let host = Host::parse("burst.example").unwrap();
        let configs: Vec<Arc<ServerConfig>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| ca.server_config(&host).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ca.minted(), 1);
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
    }

    #[test]
    fn half_present_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
        assert!(matches!(
            CertAuthority::load_or_create(dir.path()),
            Err(CaError::HalfPresent(..))
        ));
        fs::write(dir.path().join(CA_KEY_FILE), "y").unwrap();
        assert!(matches!(
            CertAuthority::load_or_create(dir.path()),
            Err(CaError::BadCert(..))
        ));
    }
}
