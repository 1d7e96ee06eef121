//! Host normalisation and `ALLOWED_DOMAINS` matching. Input: `pattern\nhost[\nport]`.
//! Properties: never panics; a parsed host round-trips through `as_str`, `with_port` and
//! `authority`; parsing is case-insensitive; exact and suffix patterns match exactly the
//! hosts a label-boundary reference says, whatever the case they were written in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{DomainPattern, Host, parse_authority, parse_patterns};

fn reference_within(host: &Host, suffix: &Host) -> bool {
    host == suffix
        || (host.ip().is_none() && host.as_str().ends_with(&format!(".{}", suffix.as_str())))
}

fn check_host(raw: &str, port: u16) -> Option<Host> {
    let host = Host::parse(raw).ok()?;
    let s = host.as_str();
    assert!(!s.is_empty());
    assert!(
        !s.bytes().any(|b| b.is_ascii_uppercase()),
        "{s:?} not lowercase"
    );
    if host.ip().is_none() {
        assert!(s.len() <= 253 && !s.ends_with('.'), "{s:?}");
    }
    assert_eq!(
        Host::parse(s).as_ref(),
        Ok(&host),
        "as_str does not round-trip"
    );
    assert_eq!(
        Host::parse(&raw.to_ascii_uppercase()).as_ref(),
        Ok(&host),
        "parse is case-sensitive for {raw:?}"
    );
    if port != 0 {
        assert_eq!(
            parse_authority(&host.with_port(port), None),
            Ok((host.clone(), port)),
            "with_port does not round-trip"
        );
        for default in [80, 443, port] {
            assert_eq!(
                parse_authority(&host.authority(port, default), Some(default)),
                Ok((host.clone(), port)),
                "authority({port}, {default}) does not round-trip"
            );
        }
    }
    Some(host)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let pattern = lines.next().unwrap_or_default();
    let raw_host = lines.next().unwrap_or_default();
    let port = lines
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(443);

    // Every host-shaped piece of input goes through the same checks.
    let _ = parse_authority(raw_host, None);
    let _ = parse_authority(raw_host, Some(port));
    let _ = parse_patterns(&text);
    let host = check_host(raw_host, port);
    let _ = check_host(pattern, port);

    let Ok(parsed) = DomainPattern::parse(pattern) else {
        return;
    };
    let Some(host) = host else { return };
    let matched = parsed.matches(&host);
    match &parsed {
        DomainPattern::Exact(h) => assert_eq!(matched, *h == host),
        DomainPattern::Suffix(s) => assert_eq!(matched, reference_within(&host, s)),
        DomainPattern::Regex(_) => return,
    }
    let upper = DomainPattern::parse(&pattern.to_ascii_uppercase())
        .expect("an exact or suffix pattern parses in upper case too");
    assert_eq!(
        upper.matches(&host),
        matched,
        "matching depends on the pattern's case"
    );
});
