//! Transparent mode: read the server name from a client's TLS ClientHello.
//!
//! A redirected connection carries no CONNECT line, so its SNI is the only
//! statement of which host the client wants; policy and credential routing
//! key off it. The pieces, in the order the listener uses them:
//!
//! 1. [`looks_like_tls`] on the first byte: TLS, or try plain HTTP.
//! 2. [`read_client_hello_into`]: read until [`parse_sni`] decides, bounded
//!    by [`ReadLimits`] (size and [`CLIENT_HELLO_TIMEOUT`]).
//! 3. [`Replay`] the bytes read into the TLS acceptor (or the HTTP server).
//!
//! Anything but exactly one valid host name, or a clean ClientHello without
//! SNI, is an error: the caller refuses the connection (fail closed).

mod name;
mod parse;
mod read;
mod replay;

// Shared with tests/client_hello_fixtures.rs, which uses the parts these unit tests do not.
#[cfg(test)]
#[allow(dead_code)]
mod testing;

pub use name::{InvalidName, SniName};
pub use parse::{
    HANDSHAKE_HEADER_LEN, MAX_CLIENT_HELLO_LEN, MAX_CLIENT_HELLO_RECORDS,
    MAX_CLIENT_HELLO_WIRE_LEN, MAX_PLAINTEXT_RECORD_LEN, ParseError, Parsed, RECORD_HEADER_LEN,
    Sni, looks_like_tls, parse_sni,
};
pub use read::{
    CLIENT_HELLO_TIMEOUT, ReadError, ReadLimits, read_client_hello, read_client_hello_into,
};
pub use replay::Replay;
