//! The benchmark's PKI, made fresh per run: an upstream CA with one leaf for the test
//! upstream, and an interception CA shared by every proxy peer (paude-proxy, Squid and
//! mitmproxy all sign with the same ECDSA P-256 key, so no peer wins by its key type).

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

fn ca(name: &str) -> Result<(Issuer<'static, KeyPair>, String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "paude-proxy bench");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    Ok((Issuer::new(params, key), cert_pem, key_pem))
}

/// Writes into `dir`: `upstream-ca.crt`, `upstream.crt`, `upstream.key` (leaf for `names`),
/// `proxy-ca.crt`, `proxy-ca.key` (PKCS#8) and `mitmproxy-ca.pem` (key then cert, the
/// layout mitmproxy expects in its confdir).
pub fn generate(dir: &Path, names: &[String]) -> Result<(), String> {
    let err = |e: rcgen::Error| e.to_string();
    let (up_issuer, up_ca_pem, _) = ca("paude-bench upstream CA").map_err(err)?;
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(err)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("bench", |n| n.as_str()),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = params.signed_by(&leaf_key, &up_issuer).map_err(err)?;
    let (_, proxy_ca_pem, proxy_key_pem) = ca("paude-bench interception CA").map_err(err)?;

    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let files = [
        ("upstream-ca.crt", up_ca_pem),
        ("upstream.crt", leaf.pem()),
        ("upstream.key", leaf_key.serialize_pem()),
        ("proxy-ca.crt", proxy_ca_pem.clone()),
        ("proxy-ca.key", proxy_key_pem.clone()),
        ("mitmproxy-ca.pem", format!("{proxy_key_pem}{proxy_ca_pem}")),
    ];
    for (name, text) in files {
        fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))?;
    }
    Ok(())
}
