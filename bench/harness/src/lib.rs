//! Shared pieces of the benchmark tools: the test PKI, TLS configs, a tiny flag parser and
//! the constants every peer is measured with.

pub mod args;
pub mod body;
pub mod load;
pub mod pki;
pub mod stats;

use std::time::{SystemTime, UNIX_EPOCH};

/// Body size of the small-request rows (issue 7: "1 KiB responses").
pub const SMALL_BODY: usize = 1024;
/// Chunk size for streamed bulk bodies: big enough that per-chunk overhead is noise.
pub const BULK_CHUNK: usize = 64 * 1024;

/// Wall-clock nanoseconds since the epoch. SSE events carry it so that the client, a
/// different process on the same machine, can compute each event's delivery delay.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
