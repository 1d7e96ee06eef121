//! The HTTP/1 framing watcher over arbitrary client byte streams, read in arbitrary
//! pieces. Properties: never panics, and the verdict (which request, if any, carries both
//! Content-Length and Transfer-Encoding) does not depend on where the reads split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::framing_conflict;

/// Small deterministic generator, so a crash reproduces from its input alone.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn split<'a>(data: &'a [u8], rng: &mut SplitMix, max_piece: u64) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = ((rng.next() % max_piece) as usize + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

fuzz_target!(|data: &[u8]| {
    // The first byte seeds the split points; the rest is the client's stream.
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let whole = framing_conflict(&[wire]);
    let mut rng = SplitMix(u64::from(seed));
    for max_piece in [1, 3, 17, 200] {
        // Byte-at-a-time reparses the head each read: keep that case to modest inputs.
        if max_piece == 1 && wire.len() > 2048 {
            continue;
        }
        let pieces = split(wire, &mut rng, max_piece);
        assert_eq!(
            framing_conflict(&pieces),
            whole,
            "verdict changed with reads of at most {max_piece} bytes: {:?}",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
    }
});
