//! Test-only builders for ClientHello bytes and access to the captured
//! fixtures in `tests/fixtures/client_hello/` (see the README there for how
//! each was made).

// Through the parent's re-exports: tests/client_hello_fixtures.rs includes this file too.
use super::{HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN};

/// One TLS record of `kind` around `payload`, record version TLS 1.0 as real
/// clients send in their first flight.
pub fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("test record fits");
    [&[kind, 0x03, 0x01][..], &len.to_be_bytes(), payload].concat()
}

/// A handshake message carried in one record.
pub fn single_record(message: &[u8]) -> Vec<u8> {
    record(0x16, message)
}

/// A handshake message carried in records of at most `fragment` bytes.
pub fn handshake_records(message: &[u8], fragment: usize) -> Vec<u8> {
    message
        .chunks(fragment.max(1))
        .flat_map(|piece| record(0x16, piece))
        .collect()
}

/// A ClientHello handshake message (header included) with the given
/// extensions, each `(type, data)`, and otherwise minimal TLS 1.2 fields.
pub fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (ext_type, data) in extensions {
        block.extend_from_slice(&ext_type.to_be_bytes());
        let len = u16::try_from(data.len()).expect("test extension fits");
        block.extend_from_slice(&len.to_be_bytes());
        block.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // empty session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let block_len = u16::try_from(block.len()).expect("test block fits");
    body.extend_from_slice(&block_len.to_be_bytes());
    body.extend_from_slice(&block);
    let len = u32::try_from(body.len()).expect("test hello fits");
    [&[0x01][..], &len.to_be_bytes()[1..], &body].concat()
}

/// A `server_name` extension holding `(name_type, name)` entries.
pub fn server_name_ext(entries: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (name_type, name) in entries {
        list.push(*name_type);
        let len = u16::try_from(name.len()).expect("test name fits");
        list.extend_from_slice(&len.to_be_bytes());
        list.extend_from_slice(name);
    }
    let list_len = u16::try_from(list.len()).expect("test list fits");
    (0x0000, [&list_len.to_be_bytes()[..], &list].concat())
}

/// Re-carries the first handshake message of `wire` (records as a client
/// sent them) in records of at most `fragment` bytes.
pub fn refragment(wire: &[u8], fragment: usize) -> Vec<u8> {
    let mut handshake = Vec::new();
    let mut rest = wire;
    while let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        handshake.extend_from_slice(&after[..len]);
        rest = &after[len..];
    }
    let message_len = HANDSHAKE_HEADER_LEN
        + (usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]));
    handshake_records(&handshake[..message_len], fragment)
}

/// Small deterministic PRNG (xorshift64*), so property tests need no new
/// dependency and a failure reproduces from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// A captured ClientHello (its expected answers live in tests/client_hello_fixtures.rs).
pub struct Fixture {
    pub file: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! fixture {
    ($file:literal) => {
        Fixture {
            file: $file,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/client_hello/",
                $file
            )),
        }
    };
}

pub const FIXTURES: &[Fixture] = &[
    fixture!("curl_sni.bin"),
    fixture!("curl_ip_no_sni.bin"),
    fixture!("python_sni.bin"),
    fixture!("node_sni.bin"),
    fixture!("node_sni_refragmented_3_records.bin"),
    fixture!("openssl_sni.bin"),
    fixture!("openssl_tls12_sni.bin"),
    fixture!("openssl_no_sni.bin"),
    fixture!("openssl_mixed_case_trailing_dot.bin"),
    fixture!("openssl_ip_literal_sni.bin"),
    fixture!("openssl_multi_record_max_send_frag.bin"),
    fixture!("openssl_oversized_alpn.bin"),
];

pub fn fixture(file: &str) -> &'static [u8] {
    FIXTURES
        .iter()
        .find(|f| f.file == file)
        .unwrap_or_else(|| panic!("no fixture {file}"))
        .bytes
}
