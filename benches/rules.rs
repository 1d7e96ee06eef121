//! `cargo bench --bench rules`: the per-request cost of the rule check with 10 and with
//! 10,000 rules. Plain harness (no criterion: one less heavy dependency); prints ns/request.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use paude_proxy::host::Host;
use paude_proxy::policy::{self, Entry, Facts, Policy, RequestLine};

/// Requests per measurement; large enough that timer resolution does not matter.
const ITERATIONS: u32 = 200_000;

/// `n` rules: one per host (exact and suffix), each with methods and path patterns, plus a
/// regex rule every 1,000, the way a large generated policy looks.
fn policy_text(n: usize) -> String {
    let mut text = String::from("default = \"deny\"\n");
    for i in 0..n {
        let host = match i % 3 {
            0 => format!("\"api{i}.example.com\""),
            1 => format!("\".svc{i}.example.net\""),
            _ => format!("\"h{i}.example.org\""),
        };
        let host = if i % 1000 == 999 {
            format!("\"~^re{i}-[a-z]+\\\\.example\\\\.io$\"")
        } else {
            host
        };
        text.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\nhosts = [{host}]\nmethods = [\"GET\", \"POST\"]\n\
             paths = [\"/v1/**\", \"/repos/*/*/git-receive-pack\"]\naction = \"allow\"\n"
        ));
    }
    // The rule the measured request hits sits at the very end.
    text.push_str(
        "[[rule]]\nid = \"target\"\nhosts = [\"api.github.com\"]\nmethods = [\"GET\"]\n\
         paths = [\"/repos/*/*/pulls/**\"]\naction = \"allow\"\n",
    );
    text
}

fn measure(n: usize) -> f64 {
    let requests = policy::file::parse(&policy_text(n), &|_| false).expect("bench policy parses");
    let policy = Policy {
        requests: Arc::new(requests),
        ..Policy::default()
    };
    let facts = Facts {
        client: "10.200.0.2".parse().expect("ip"),
        host: Host::parse("api.github.com").expect("host"),
        port: 443,
        entry: Entry::Tls,
    };
    let req = RequestLine {
        method: "GET",
        path: "/repos/octo/hello/./pulls/12/files",
        query: Some("page=2"),
    };
    assert!(policy::check_request(&policy, &facts, &req).is_ok());
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(policy::check_request(
            black_box(&policy),
            black_box(&facts),
            black_box(&req),
        ))
        .ok();
    }
    start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
}

fn main() {
    for n in [10, 10_000] {
        // Best of 5: the machine is shared; the minimum is the least disturbed figure.
        let best = (0..5).map(|_| measure(n)).fold(f64::INFINITY, f64::min);
        println!("rules={n:>6}  {best:>8.0} ns/request");
    }
}
