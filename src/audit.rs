//! The squid-format blocked log that existing tooling reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::macros::format_description;

/// Appends one line per denial:
/// `2026-11-29T03:46:28 UTC 10.0.0.5 TCP_DENIED/403 CONNECT evil.com:443 BLOCKED`.
/// The format is consumed by existing tooling and must stay byte-compatible.
pub struct BlockedLog {
    file: Mutex<File>,
}

impl BlockedLog {
    pub fn open(path: &Path) -> io::Result<BlockedLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(BlockedLog {
            file: Mutex::new(file),
        })
    }

    /// `what` is `host:port` for CONNECT and the URL for plain HTTP. Failures are logged,
    /// never propagated: a full disk must not turn a denial into an allow.
    pub fn denied(&self, client: IpAddr, method: &str, what: &str) {
        let line = format_line(OffsetDateTime::now_utc(), client, method, what);
        // One write per line on an O_APPEND file keeps concurrent lines whole.
        let result = match self.file.lock() {
            Ok(mut f) => f.write_all(line.as_bytes()),
            Err(poisoned) => poisoned.into_inner().write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!("cannot write the blocked log: {e}");
        }
    }
}

fn format_line(now: OffsetDateTime, client: IpAddr, method: &str, what: &str) -> String {
    let stamp = now
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    // Fields are space-separated; a value from the network must not add fields or lines.
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    format!(
        "{stamp} UTC {} TCP_DENIED/403 {} {} BLOCKED\n",
        client.to_canonical(),
        clean(method),
        clean(what)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_squid_compatible() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_923_988).unwrap();
        let line = format_line(
            t,
            "::ffff:10.0.0.5".parse().unwrap(),
            "CONNECT",
            "evil.com:443",
        );
        assert_eq!(
            line,
            "2026-11-29T03:46:28 UTC 10.0.0.5 TCP_DENIED/403 CONNECT evil.com:443 BLOCKED\n"
        );
        let line = format_line(t, "10.0.0.5".parse().unwrap(), "GET", "http://a b/\nx");
        assert!(line.ends_with("GET http://a_b/_x BLOCKED\n"), "{line}");
    }
}
