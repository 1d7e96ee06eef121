//! `cargo bench --bench sni_ip`: the cost of the transparent-mode SNI <-> IP evidence lookup
//! (`AnswerRecord::check`, what `app.answers.check(..)` in src/transparent.rs calls) with 10
//! to 100,000 recorded (client, name) answers. Plain harness; prints ns/lookup per size.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use paude_proxy::dns::{AnswerRecord, Evidence};

const ITERATIONS: usize = 400_000;
const SIZES: [usize; 5] = [10, 1_000, 10_000, 100_000, 1_000_000];
/// A sandbox's answers live for TTL + this grace (the proxy's default is of this order).
const GRACE: Duration = Duration::from_secs(600);
const TTL: Duration = Duration::from_secs(300);

fn client(i: usize) -> IpAddr {
    // A few hundred agents, many names each.
    IpAddr::V4(Ipv4Addr::new(10, 200, (i % 251) as u8, 2))
}

fn name(i: usize) -> String {
    format!("api{i}.svc{}.example.com", i % 97)
}

fn addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xC633_6400_u32.wrapping_add(i as u32)))
}

/// (same answer every time, every answer in turn) in ns per lookup.
fn measure(record: &AnswerRecord, n: usize, now: Instant) -> (f64, f64) {
    let one = n / 2;
    let (c, h, a) = (client(one), name(one), addr(one));
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(record.check(black_box(c), black_box(&h), black_box(a), now));
    }
    let same = start.elapsed().as_nanos() as f64 / ITERATIONS as f64;
    // Names are built beforehand (a 4,096-entry window), so the loop times only the lookup.
    let stride = 7_919;
    let window: Vec<(IpAddr, String, IpAddr)> = (0..4096)
        .map(|k| {
            let i = (k * stride) % n;
            (client(i), name(i), addr(i))
        })
        .collect();
    let start = Instant::now();
    for k in 0..ITERATIONS {
        let (c, h, a) = &window[k % window.len()];
        black_box(record.check(*c, h, *a, now));
    }
    let spread = start.elapsed().as_nanos() as f64 / ITERATIONS as f64;
    (same, spread)
}

fn main() {
    for n in SIZES {
        let record = AnswerRecord::new(n, GRACE);
        let now = Instant::now();
        for i in 0..n {
            record.record(client(i), &name(i), &[addr(i)], TTL, now);
        }
        assert_eq!(record.len(), n);
        assert_eq!(
            record.check(client(n / 2), &name(n / 2), addr(n / 2), now),
            Evidence::Given
        );
        let (mut same, mut spread) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let (a, b) = measure(&record, n, now);
            same = same.min(a);
            spread = spread.min(b);
        }
        println!(
            "answers={n:>8}  {same:>7.0} ns/lookup (one answer)  {spread:>7.0} ns/lookup (many in turn)"
        );
    }
}
