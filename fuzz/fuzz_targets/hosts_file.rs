//! The two hosts-file parsers over arbitrary text: the policy resolver's strict one
//! (`PAUDE_PROXY_HOSTS_FILE`, errors name the line) and the sandbox DNS server's lenient one.
//! Properties: never panics; every name the strict parser accepts round-trips through
//! `Host::parse`, and the DNS server pins the same addresses for it, so the sandbox is told
//! what the policy then checks.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{Host, SandboxHosts, parse_hosts_file_text};

fn canonical(addrs: &[IpAddr]) -> BTreeSet<IpAddr> {
    addrs.iter().map(IpAddr::to_canonical).collect()
}

fuzz_target!(|data: &[u8]| {
    // Both callers read the file as UTF-8 (the DNS one lossily).
    let text = String::from_utf8_lossy(data);
    let sandbox = SandboxHosts::parse(&text);
    let Ok(strict) = parse_hosts_file_text(&text) else {
        return;
    };
    for (host, addrs) in &strict {
        assert!(!addrs.is_empty());
        assert_eq!(Host::parse(host.as_str()).as_ref(), Ok(host));
        if host.ip().is_some() {
            continue;
        }
        let pinned = sandbox.lookup(host.as_str()).unwrap_or_default();
        assert_eq!(
            canonical(pinned),
            canonical(addrs),
            "the DNS server and the policy disagree about {host}"
        );
    }
});
