//! Pure, incremental parse of the server name out of the bytes a client has
//! sent so far.
//!
//! The parse is re-run over the whole buffer after each read. It answers
//! `Incomplete` until the answer can no longer change, and then gives the same
//! answer for every longer buffer: an early error is decided only from bytes
//! already seen, and a name only once the whole ClientHello is in, so a later
//! malformation can never hide behind an early "yes".

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, TlsRecordType, parse_tls_extension_sni_hostname,
    parse_tls_extension_unknown, parse_tls_handshake_client_hello, parse_tls_record_header,
};

use super::name::{InvalidName, SniName};

/// Type byte, version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;
/// Type byte, 24-bit length.
pub const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record fragment is at most 2^14 bytes.
pub const MAX_PLAINTEXT_RECORD_LEN: usize = 1 << 14;
/// Largest ClientHello body accepted. Real ones are 200 B to ~2 KiB, with
/// post-quantum key shares (X25519MLKEM768 adds 1,216 bytes) near the top;
/// 16 KiB leaves room for growth while bounding what one client can make the
/// proxy buffer before any policy check.
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;
/// How many records the ClientHello may be fragmented into. Clients fragment
/// at a small max_fragment_length or to evade middleboxes; dozens is already
/// unusual, and the cap keeps record headers from inflating the read limit.
pub const MAX_CLIENT_HELLO_RECORDS: usize = 64;
/// The most bytes a decided ClientHello can occupy on the wire.
pub const MAX_CLIENT_HELLO_WIRE_LEN: usize =
    HANDSHAKE_HEADER_LEN + MAX_CLIENT_HELLO_LEN + MAX_CLIENT_HELLO_RECORDS * RECORD_HEADER_LEN;

const HANDSHAKE_RECORD: u8 = 0x16;
const TLS_MAJOR_VERSION: u8 = 0x03;
const CLIENT_HELLO: u8 = 0x01;
const SERVER_NAME_EXTENSION: u16 = 0x0000;

/// What the client's ClientHello says about the server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// Exactly one valid host name.
    Name(SniName),
    /// A complete, well-formed ClientHello without a `server_name` extension.
    Absent,
}

/// The result of parsing a possibly incomplete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not decided yet: read at least this many more bytes and parse again.
    Incomplete { at_least: usize },
    /// Decided; a longer buffer gives the same answer.
    Complete(Sni),
}

/// Why a ClientHello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The bytes do not start with a TLS handshake record; the caller may try
    /// plain HTTP.
    #[error("not a TLS handshake record (first bytes {first:02x?})")]
    NotTls { first: Vec<u8> },
    #[error("first handshake message is type {msg_type}, not a ClientHello")]
    NotClientHello { msg_type: u8 },
    #[error("ClientHello of {len} bytes is over the {MAX_CLIENT_HELLO_LEN}-byte limit")]
    TooLarge { len: usize },
    #[error("ClientHello is split over more than {MAX_CLIENT_HELLO_RECORDS} records")]
    TooManyRecords,
    #[error("more than one server name in the ClientHello")]
    MultipleNames,
    #[error("server_name entry of unsupported type {name_type}")]
    UnsupportedNameType { name_type: u8 },
    #[error("invalid server name: {0}")]
    InvalidName(#[from] InvalidName),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Cheap first-bytes check for the transparent listener: `true` if the bytes
/// can start a TLS handshake record, `false` for anything else (plain HTTP
/// starts with an ASCII method). Decides from the first byte, and also uses
/// the second if present. An empty slice is not TLS: read a byte first.
pub fn looks_like_tls(first_bytes: &[u8]) -> bool {
    !first_bytes.is_empty() && check_first_header_prefix(first_bytes).is_ok()
}

/// Parses the server name from the bytes read so far.
///
/// Reassembles the handshake message from consecutive handshake records, so a
/// ClientHello split over several records and any number of reads is handled.
/// Bytes after the ClientHello (early data, pipelined records) are ignored.
/// Never panics, whatever the input.
pub fn parse_sni(buf: &[u8]) -> Result<Parsed, ParseError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    let mut records = 0usize;
    loop {
        let header_prefix = rest.get(..RECORD_HEADER_LEN).unwrap_or(rest);
        if records == 0 {
            check_first_header_prefix(header_prefix)?;
        } else {
            check_next_header_prefix(header_prefix)?;
        }
        if rest.len() < RECORD_HEADER_LEN {
            // The type and version bytes can each decide on their own.
            let at_least = if rest.len() < 2 {
                1
            } else {
                RECORD_HEADER_LEN - rest.len()
            };
            return Ok(Parsed::Incomplete { at_least });
        }
        let (body, header) =
            parse_tls_record_header(rest).map_err(|_| ParseError::Malformed("record header"))?;
        let len = usize::from(header.len);
        if len == 0 {
            // RFC 8446 §5.1: zero-length handshake fragments are forbidden.
            return Err(ParseError::Malformed("empty handshake record"));
        }
        if len > MAX_PLAINTEXT_RECORD_LEN {
            return Err(ParseError::Malformed("record longer than 2^14 bytes"));
        }
        records += 1;
        if records > MAX_CLIENT_HELLO_RECORDS {
            return Err(ParseError::TooManyRecords);
        }
        let available = body.get(..len).unwrap_or(body);
        handshake.extend_from_slice(available);
        if let Some(sni) = decide(&handshake)? {
            return Ok(Parsed::Complete(sni));
        }
        if available.len() < len {
            let at_least = (len - available.len()).min(bytes_to_next_decision(&handshake));
            return Ok(Parsed::Incomplete { at_least });
        }
        rest = body.get(len..).unwrap_or_default();
    }
}

/// The first record must be a handshake record of TLS major version 3; if it
/// is not, this is some other protocol (or SSLv2), not a broken TLS client.
fn check_first_header_prefix(prefix: &[u8]) -> Result<(), ParseError> {
    // `first` holds exactly the bytes that decided, so a longer buffer
    // reports the same error.
    match prefix {
        [kind, ..] if *kind != HANDSHAKE_RECORD => Err(ParseError::NotTls { first: vec![*kind] }),
        [kind, major, ..] if *major != TLS_MAJOR_VERSION => Err(ParseError::NotTls {
            first: vec![*kind, *major],
        }),
        _ => Ok(()),
    }
}

/// RFC 8446 §5.1: a handshake message may not be interleaved with records of
/// another type, so a later record of the ClientHello must be handshake too.
fn check_next_header_prefix(prefix: &[u8]) -> Result<(), ParseError> {
    if let Some(kind) = prefix.first()
        && TlsRecordType(*kind) != TlsRecordType::Handshake
    {
        return Err(ParseError::Malformed(
            "non-handshake record inside the ClientHello",
        ));
    }
    if let Some(major) = prefix.get(1)
        && *major != TLS_MAJOR_VERSION
    {
        return Err(ParseError::Malformed("record version is not TLS"));
    }
    Ok(())
}

/// Looks at the reassembled handshake bytes; `None` means "need more".
fn decide(handshake: &[u8]) -> Result<Option<Sni>, ParseError> {
    let Some(&msg_type) = handshake.first() else {
        return Ok(None);
    };
    if msg_type != CLIENT_HELLO {
        return Err(ParseError::NotClientHello { msg_type });
    }
    let Some(&[_, a, b, c]) = handshake.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if len > MAX_CLIENT_HELLO_LEN {
        return Err(ParseError::TooLarge { len });
    }
    match handshake.get(HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + len) {
        Some(body) => sni_from_client_hello(body).map(Some),
        None => Ok(None),
    }
}

/// How many more handshake bytes until `decide` could answer: the type byte,
/// then the length, then the whole message. Keeps `at_least` a true lower
/// bound, so a caller reading exactly that much never overshoots a decision.
fn bytes_to_next_decision(handshake: &[u8]) -> usize {
    let next = match handshake {
        [] => 1,
        [_, a, b, c, ..] => {
            HANDSHAKE_HEADER_LEN + (usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))
        }
        _ => HANDSHAKE_HEADER_LEN,
    };
    next.saturating_sub(handshake.len()).max(1)
}

/// Parses a complete ClientHello body. Every length field must add up: a
/// ClientHello that does not parse cleanly is refused (fail closed), since a
/// lenient parse could disagree with the TLS stack about the name.
fn sni_from_client_hello(body: &[u8]) -> Result<Sni, ParseError> {
    let (trailing, hello) = parse_tls_handshake_client_hello(body)
        .map_err(|_| ParseError::Malformed("ClientHello fields"))?;
    // tls-parser treats an extensions block whose length overruns the message
    // as absent; leftover bytes are how that shows.
    if !trailing.is_empty() {
        return Err(ParseError::Malformed("bytes after the extensions"));
    }
    let Some(mut extensions) = hello.ext else {
        return Ok(Sni::Absent);
    };
    let mut name: Option<SniName> = None;
    let mut seen_server_name = false;
    while !extensions.is_empty() {
        let (next, extension) = parse_tls_extension_unknown(extensions)
            .map_err(|_| ParseError::Malformed("extension framing"))?;
        extensions = next;
        let TlsExtension::Unknown(TlsExtensionType(ext_type), data) = extension else {
            return Err(ParseError::Malformed("extension framing"));
        };
        if ext_type != SERVER_NAME_EXTENSION {
            continue;
        }
        if seen_server_name {
            return Err(ParseError::MultipleNames);
        }
        seen_server_name = true;
        name = Some(host_name_from_extension(data)?);
    }
    Ok(name.map_or(Sni::Absent, Sni::Name))
}

/// RFC 6066 §3: `ServerNameList` of `(NameType, opaque HostName<1..2^16-1>)`,
/// at least one entry, at most one of each type, and only `host_name` exists.
fn host_name_from_extension(data: &[u8]) -> Result<SniName, ParseError> {
    let Some((len_bytes, mut list)) = data.split_first_chunk::<2>() else {
        return Err(ParseError::Malformed("server_name extension too short"));
    };
    if usize::from(u16::from_be_bytes(*len_bytes)) != list.len() {
        return Err(ParseError::Malformed("server_name list length"));
    }
    let mut host: Option<&[u8]> = None;
    while !list.is_empty() {
        let (next, (SNIType(name_type), raw)) = parse_tls_extension_sni_hostname(list)
            .map_err(|_| ParseError::Malformed("server_name entry"))?;
        list = next;
        if SNIType(name_type) != SNIType::HostName {
            return Err(ParseError::UnsupportedNameType { name_type });
        }
        if host.is_some() {
            return Err(ParseError::MultipleNames);
        }
        host = Some(raw);
    }
    let raw = host.ok_or(ParseError::Malformed("empty server_name list"))?;
    Ok(SniName::parse(raw)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_hello::testing::{
        client_hello, handshake_records, record, server_name_ext, single_record,
    };

    fn name(s: &str) -> Result<Parsed, ParseError> {
        Ok(Parsed::Complete(Sni::Name(
            SniName::parse(s.as_bytes()).expect("test name is valid"),
        )))
    }

    #[test]
    fn looks_like_tls_needs_a_handshake_record_start() {
        assert!(looks_like_tls(&[0x16]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(b""));
        assert!(!looks_like_tls(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_tls(b"CONNECT a:443 HTTP/1.1\r\n"));
        assert!(!looks_like_tls(&[0x16, 0x04]));
        assert!(!looks_like_tls(&[0x80, 0x2e, 0x01])); // SSLv2-style hello
        assert!(!looks_like_tls(&[0x17, 0x03, 0x03])); // application data
    }

    #[test]
    fn synthetic_hellos_give_the_expected_answer() {
        let sni = |n: &[u8]| server_name_ext(&[(0, n)]);
        let grease = (0x0a0a, Vec::new());
        let alpn = (0x0010, b"\x00\x03\x02h2".to_vec());
        let big_unknown = (0x1234, vec![0u8; 3000]);
        let cases: Vec<(&str, Vec<u8>, Result<Parsed, ParseError>)> = vec![
            (
                "empty buffer",
                vec![],
                Ok(Parsed::Incomplete { at_least: 1 }),
            ),
            (
                "one host name",
                single_record(&client_hello(&[sni(b"api.example.test")])),
                name("api.example.test"),
            ),
            (
                "name among other extensions",
                single_record(&client_hello(&[grease, sni(b"Api.GitHub.com."), alpn])),
                name("api.github.com"),
            ),
            (
                "no extensions block",
                single_record(&client_hello_without_extensions()),
                Ok(Parsed::Complete(Sni::Absent)),
            ),
            (
                "extensions without server_name",
                single_record(&client_hello(&[(0x0010, b"\x00\x03\x02h2".to_vec())])),
                Ok(Parsed::Complete(Sni::Absent)),
            ),
            (
                "hello split over two records",
                handshake_records(
                    &client_hello(&[big_unknown.clone(), sni(b"a.example")]),
                    2000,
                ),
                name("a.example"),
            ),
            (
                "hello followed by other records",
                [
                    single_record(&client_hello(&[sni(b"a.example")])),
                    record(0x17, b"early data"),
                ]
                .concat(),
                name("a.example"),
            ),
            ("plain HTTP", b"GET / HTTP/1.1\r\n".to_vec(), not_tls(b"G")),
            (
                "SSLv2 hello",
                vec![0x80, 0x2e, 0x01, 0x00, 0x02],
                not_tls(&[0x80]),
            ),
            (
                "wrong major version",
                vec![0x16, 0x04, 0x01],
                not_tls(&[0x16, 0x04]),
            ),
            (
                "alert record first",
                record(0x15, &[2, 40]),
                not_tls(&[0x15]),
            ),
            (
                "empty record",
                vec![0x16, 0x03, 0x01, 0x00, 0x00],
                Err(ParseError::Malformed("empty handshake record")),
            ),
            (
                "record over 2^14",
                vec![0x16, 0x03, 0x01, 0x40, 0x01],
                Err(ParseError::Malformed("record longer than 2^14 bytes")),
            ),
            (
                "ServerHello",
                single_record(&[0x02, 0x00, 0x00, 0x01, 0x00]),
                Err(ParseError::NotClientHello { msg_type: 2 }),
            ),
            (
                "declared length over the limit",
                vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x40, 0x01],
                Err(ParseError::TooLarge {
                    len: MAX_CLIENT_HELLO_LEN + 1,
                }),
            ),
            (
                "application data interleaved",
                [
                    handshake_records(&client_hello(&[sni(b"a.example")]), 10)[..15].to_vec(),
                    record(0x17, b"x"),
                ]
                .concat(),
                Err(ParseError::Malformed(
                    "non-handshake record inside the ClientHello",
                )),
            ),
            (
                "too many records",
                handshake_records(
                    &client_hello(&[sni(b"a.example")]),
                    client_hello(&[sni(b"a.example")]).len() / (MAX_CLIENT_HELLO_RECORDS + 1),
                ),
                Err(ParseError::TooManyRecords),
            ),
            (
                "two host names in one extension",
                single_record(&client_hello(&[server_name_ext(&[
                    (0, b"a.com"),
                    (0, b"b.com"),
                ])])),
                Err(ParseError::MultipleNames),
            ),
            (
                "two server_name extensions",
                single_record(&client_hello(&[sni(b"a.com"), sni(b"b.com")])),
                Err(ParseError::MultipleNames),
            ),
            (
                "unknown name type",
                single_record(&client_hello(&[server_name_ext(&[(1, b"a.com")])])),
                Err(ParseError::UnsupportedNameType { name_type: 1 }),
            ),
            (
                "IPv4 literal",
                single_record(&client_hello(&[sni(b"169.254.169.254")])),
                Err(InvalidName::IpLiteral.into()),
            ),
            (
                "IPv6 literal",
                single_record(&client_hello(&[sni(b"::1")])),
                Err(InvalidName::IpLiteral.into()),
            ),
            (
                "empty name",
                single_record(&client_hello(&[sni(b"")])),
                Err(InvalidName::Empty.into()),
            ),
            (
                "NUL in name",
                single_record(&client_hello(&[sni(b"api.example.test\0.evil")])),
                Err(InvalidName::BadByte {
                    byte: 0,
                    offset: 16,
                }
                .into()),
            ),
            (
                "name over 253 bytes",
                single_record(&client_hello(&[sni(
                    format!("{}com", "a.".repeat(126)).as_bytes()
                )])),
                Err(InvalidName::TooLong { len: 255 }.into()),
            ),
            (
                "empty server_name extension",
                single_record(&client_hello(&[(0, vec![])])),
                Err(ParseError::Malformed("server_name extension too short")),
            ),
            (
                "empty server_name list",
                single_record(&client_hello(&[(0, vec![0, 0])])),
                Err(ParseError::Malformed("empty server_name list")),
            ),
            (
                "server_name list length too long",
                single_record(&client_hello(&[(0, vec![0, 9, 0, 0, 1, b'a'])])),
                Err(ParseError::Malformed("server_name list length")),
            ),
            (
                "server_name list length too short",
                single_record(&client_hello(&[(0, vec![0, 3, 0, 0, 1, b'a', 0])])),
                Err(ParseError::Malformed("server_name list length")),
            ),
            (
                "host name length overruns the list",
                single_record(&client_hello(&[(0, vec![0, 4, 0, 0, 5, b'a'])])),
                Err(ParseError::Malformed("server_name entry")),
            ),
            (
                "extension length overruns the block",
                single_record(&with_extension_block(&[0x00, 0x10, 0x00, 0x09, 0x00])),
                Err(ParseError::Malformed("extension framing")),
            ),
            (
                "extensions block overruns the message",
                single_record(&hello_message(
                    &[
                        &client_hello_without_extensions()[HANDSHAKE_HEADER_LEN..],
                        &[0, 9, 0],
                    ]
                    .concat(),
                )),
                Err(ParseError::Malformed("bytes after the extensions")),
            ),
            (
                "truncated fixed fields",
                single_record(&hello_message(&[0x03, 0x03, 0x00])),
                Err(ParseError::Malformed("ClientHello fields")),
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(parse_sni(&bytes), want, "{what}");
        }
    }

    #[test]
    fn incomplete_reports_a_lower_bound() {
        let hello = single_record(&client_hello(&[server_name_ext(&[(0, b"a.example")])]));
        assert_eq!(
            parse_sni(&hello[..3]),
            Ok(Parsed::Incomplete { at_least: 2 })
        );
        let missing = hello.len() - 20;
        assert_eq!(
            parse_sni(&hello[..20]),
            Ok(Parsed::Incomplete { at_least: missing })
        );
    }

    fn not_tls(first: &[u8]) -> Result<Parsed, ParseError> {
        Err(ParseError::NotTls {
            first: first.to_vec(),
        })
    }

    /// A handshake message of type ClientHello around `body`.
    fn hello_message(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("small");
        [&[CLIENT_HELLO][..], &len.to_be_bytes()[1..], body].concat()
    }

    /// The fixed ClientHello fields with no extensions block at all.
    fn client_hello_without_extensions() -> Vec<u8> {
        let message = client_hello(&[]);
        // client_hello() ends with an empty extensions block (two zero bytes).
        let body = &message[HANDSHAKE_HEADER_LEN..message.len() - 2];
        hello_message(body)
    }

    /// The fixed fields followed by a raw extensions block `block`.
    fn with_extension_block(block: &[u8]) -> Vec<u8> {
        let fixed = client_hello_without_extensions();
        let len = u16::try_from(block.len()).expect("small");
        hello_message(&[&fixed[HANDSHAKE_HEADER_LEN..], &len.to_be_bytes(), block].concat())
    }
}
