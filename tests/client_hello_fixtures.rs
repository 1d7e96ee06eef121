//! Tests over ClientHellos captured from real clients (curl, openssl
//! s_client, python3 ssl, node tls), plus re-fragmented and mutated copies.
//! `tests/fixtures/client_hello/README.md` says how each file was made.
//!
//! Through the library's public API. It lives here, not beside the parser, because the
//! captured names are real provider hosts and the generic modules name no provider.

// The fixture table and builders the unit tests beside the parser use too (one copy).
#[path = "../src/client_hello/testing.rs"]
#[allow(dead_code)]
mod testing;

use paude_proxy::client_hello::{
    HANDSHAKE_HEADER_LEN, InvalidName, MAX_CLIENT_HELLO_RECORDS, MAX_PLAINTEXT_RECORD_LEN,
    ParseError, Parsed, RECORD_HEADER_LEN, Sni, SniName, looks_like_tls, parse_sni,
};
use testing::{FIXTURES, Rng, fixture, refragment};

/// What a fixture must parse to, and at which prefix length that is decided.
struct Expected {
    file: &'static str,
    answer: Result<Sni, ParseError>,
    decided_at: DecidedAt,
}

enum DecidedAt {
    /// Only once the whole captured ClientHello is in.
    End,
    /// From a header, before the body arrives.
    Offset(usize),
}

fn named(s: &str) -> Result<Sni, ParseError> {
    Ok(Sni::Name(SniName::parse(s.as_bytes()).expect("valid")))
}

fn expectations() -> Vec<Expected> {
    use DecidedAt::*;
    let e = |file, answer, decided_at| Expected {
        file,
        answer,
        decided_at,
    };
    vec![
        e("curl_sni.bin", named("api.openai.com"), End),
        e("curl_ip_no_sni.bin", Ok(Sni::Absent), End),
        e("python_sni.bin", named("api.github.com"), End),
        e(
            "node_sni.bin",
            named("generativelanguage.googleapis.com"),
            End,
        ),
        e(
            "node_sni_refragmented_3_records.bin",
            named("generativelanguage.googleapis.com"),
            End,
        ),
        e("openssl_sni.bin", named("api.anthropic.com"), End),
        e("openssl_tls12_sni.bin", named("api.github.com"), End),
        e("openssl_no_sni.bin", Ok(Sni::Absent), End),
        e(
            "openssl_mixed_case_trailing_dot.bin",
            named("api.example.com"),
            End,
        ),
        e(
            "openssl_ip_literal_sni.bin",
            Err(InvalidName::IpLiteral.into()),
            End,
        ),
        e(
            "openssl_multi_record_max_send_frag.bin",
            named("oauth2.googleapis.com"),
            End,
        ),
        e(
            "openssl_oversized_alpn.bin",
            Err(ParseError::TooLarge { len: 0x5000 }),
            // record header (5) + handshake type and 24-bit length (4)
            Offset(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN),
        ),
    ]
}

fn decided(result: Result<Parsed, ParseError>) -> Option<Result<Sni, ParseError>> {
    match result {
        Ok(Parsed::Incomplete { .. }) => None,
        Ok(Parsed::Complete(sni)) => Some(Ok(sni)),
        Err(e) => Some(Err(e)),
    }
}

#[test]
fn every_fixture_has_an_expectation() {
    let expected = expectations();
    for f in FIXTURES {
        assert!(expected.iter().any(|e| e.file == f.file), "{}", f.file);
    }
    assert_eq!(expected.len(), FIXTURES.len());
}

/// The linkerd2-proxy test: every prefix is `Incomplete` until the decision
/// point, then the same answer for every longer prefix.
#[test]
fn every_prefix_is_incomplete_until_decided_then_stable() {
    for e in expectations() {
        let bytes = fixture(e.file);
        let decided_at = match e.decided_at {
            DecidedAt::End => bytes.len(),
            DecidedAt::Offset(n) => n,
        };
        for n in 0..=bytes.len() {
            let got = parse_sni(&bytes[..n]);
            if n < decided_at {
                let Ok(Parsed::Incomplete { at_least }) = got else {
                    panic!("{}: prefix {n} decided early: {got:?}", e.file);
                };
                assert!(at_least > 0, "{}: prefix {n}", e.file);
                assert!(
                    n + at_least <= decided_at,
                    "{}: prefix {n} asks for {at_least}, more than the {decided_at} needed",
                    e.file
                );
            } else {
                assert_eq!(
                    decided(got).as_ref(),
                    Some(&e.answer),
                    "{}: prefix {n}",
                    e.file
                );
            }
        }
    }
}

#[test]
fn fixtures_start_like_tls() {
    for f in FIXTURES {
        assert!(looks_like_tls(&f.bytes[..1]), "{}", f.file);
        assert!(looks_like_tls(f.bytes), "{}", f.file);
    }
}

#[test]
fn the_multi_record_fixtures_really_span_several_records() {
    for (file, records) in [
        ("openssl_multi_record_max_send_frag.bin", 9),
        ("node_sni_refragmented_3_records.bin", 3),
    ] {
        let bytes = fixture(file);
        let mut count = 0;
        let mut rest = bytes;
        while let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() {
            assert_eq!(header[0], 0x16, "{file}");
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            rest = &after[len..];
            count += 1;
        }
        assert_eq!(count, records, "{file}");
    }
}

/// The answer does not depend on how the client fragmented its records.
#[test]
fn any_fragmentation_gives_the_same_answer() {
    for e in expectations() {
        if matches!(e.decided_at, DecidedAt::Offset(_)) {
            continue;
        }
        let bytes = fixture(e.file);
        let hello_len = bytes.len();
        let smallest = hello_len.div_ceil(MAX_CLIENT_HELLO_RECORDS);
        let sizes = [
            smallest,
            smallest + 1,
            64,
            100,
            333,
            1000,
            MAX_PLAINTEXT_RECORD_LEN,
        ];
        for fragment in sizes.into_iter().filter(|&size| size >= smallest) {
            let wire = refragment(bytes, fragment);
            assert_eq!(
                decided(parse_sni(&wire)).as_ref(),
                Some(&e.answer),
                "{} in records of {fragment}",
                e.file
            );
        }
        let too_many = refragment(bytes, 1);
        assert_eq!(
            parse_sni(&too_many),
            Err(ParseError::TooManyRecords),
            "{}",
            e.file
        );
    }
}

/// Whatever the client sends after its ClientHello does not change the answer.
#[test]
fn bytes_after_the_hello_do_not_change_the_answer() {
    let mut rng = Rng::new(7);
    for e in expectations() {
        let mut bytes = fixture(e.file).to_vec();
        for _ in 0..64 {
            bytes.push(rng.next() as u8);
        }
        assert_eq!(
            decided(parse_sni(&bytes)).as_ref(),
            Some(&e.answer),
            "{}",
            e.file
        );
    }
}

/// Fuzz-style property test with a fixed seed: random mutations of real
/// ClientHellos never panic, a decided prefix agrees with the whole input,
/// and any name that comes out is a valid normalised one.
#[test]
fn mutated_fixtures_never_panic_and_stay_consistent() {
    const MUTANTS_PER_FIXTURE: usize = 2000;
    const PREFIX_PROBES: usize = 6;
    let mut rng = Rng::new(0x5eed_c11e_7e11_0000);
    let mut names = 0;
    for f in FIXTURES {
        for _ in 0..MUTANTS_PER_FIXTURE {
            let mutant = mutate(f.bytes, &mut rng);
            let whole = parse_sni(&mutant);
            if let Ok(Parsed::Complete(Sni::Name(name))) = &whole {
                names += 1;
                let again = SniName::parse(name.as_str().as_bytes());
                assert_eq!(again.as_ref(), Ok(name), "{}: {name:?}", f.file);
                assert_eq!(name.as_str(), name.as_str().to_ascii_lowercase());
            }
            for _ in 0..PREFIX_PROBES {
                let k = rng.below(mutant.len() + 1);
                if let Some(early) = decided(parse_sni(&mutant[..k])) {
                    assert_eq!(
                        decided(whole.clone()),
                        Some(early),
                        "{}: prefix {k} of a mutant decided differently",
                        f.file
                    );
                }
            }
        }
    }
    // Most mutations leave the name intact; if none did, the mutator is
    // broken and the test is not exercising the success path.
    assert!(names > 0);
}

fn mutate(original: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = original.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        if bytes.is_empty() {
            bytes.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => bytes[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
            3 => bytes.truncate(at),
            4 => {
                let end = (at + 1 + rng.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            5 => {
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, junk);
            }
            _ => {
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }
    bytes
}
