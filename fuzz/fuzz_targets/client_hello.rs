//! The transparent listener's ClientHello/SNI parser over arbitrary bytes. Properties: it
//! never panics; the answer on any prefix is `Incomplete` or equals the answer on the whole
//! input; `Incomplete { at_least }` is a true lower bound; a name agrees with `Host::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{Host, Parsed, Sni, parse_sni};

/// Every prefix up to this length is checked; beyond it, a sample (keeps runs fast on the
/// 2 KiB fixtures while still covering every record boundary of small inputs).
const ALL_PREFIXES_UP_TO: usize = 512;
const SAMPLED_PREFIXES: usize = 64;

fn prefix_lengths(len: usize) -> impl Iterator<Item = usize> {
    let all = 0..=len.min(ALL_PREFIXES_UP_TO);
    let stride = (len / SAMPLED_PREFIXES).max(1);
    let sampled = (ALL_PREFIXES_UP_TO + 1..len).step_by(stride);
    all.chain(sampled)
}

fuzz_target!(|data: &[u8]| {
    let whole = parse_sni(data);
    if let Ok(Parsed::Complete(Sni::Name(name))) = &whole {
        // The listener re-parses the SNI as a Host: both must normalise the same way.
        if let Ok(host) = Host::parse(name.as_str()) {
            assert_eq!(
                host.as_str(),
                name.as_str(),
                "SNI and Host normalise differently"
            );
        }
    }
    for len in prefix_lengths(data.len()) {
        let part = parse_sni(&data[..len]);
        match &part {
            Ok(Parsed::Incomplete { at_least }) => {
                assert!(*at_least >= 1, "Incomplete asks for zero bytes at {len}");
                if data.len() < len + at_least {
                    assert!(
                        matches!(whole, Ok(Parsed::Incomplete { .. })),
                        "prefix {len} asked for {at_least} more bytes, but {} decided: {whole:?}",
                        data.len()
                    );
                }
            }
            decided => assert_eq!(
                decided,
                &whole,
                "prefix of {len} bytes decided differently from all {} bytes",
                data.len()
            ),
        }
    }
});
