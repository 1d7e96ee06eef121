//! Distinctive fake secrets and the leak check. Every secret is random per test so a leak can
//! only come from this test's proxy, and long enough that a substring match cannot be chance.

/// A fake "real" credential, e.g. `sk-test-REAL-openai-3f9c...`.
pub fn fake_secret(label: &str) -> String {
    format!("sk-test-REAL-{label}-{}", random_hex(12))
}

/// A dummy value the sandboxed client would send; it must never reach the upstream on a route.
pub fn dummy(label: &str) -> String {
    format!("sk-dummy-client-{label}-{}", random_hex(8))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("getrandom");
    hex::encode(buf)
}

/// Panics if any secret occurs in `haystack`. `what` names the haystack in the message. The
/// secret itself is not printed, only its position in the list, so test output stays clean.
pub fn assert_no_secret_in(what: &str, haystack: &str, secrets: &[String]) {
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !haystack.contains(secret.as_str()),
            "secret #{i} (env value) leaked into {what}"
        );
    }
}

/// RFC 4648 base64 (with padding), enough to build the expected `Basic` header value.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648_vectors() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
