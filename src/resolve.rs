//! Name resolution for policy checks: once per connection, before dialling, never again
//! after the check (no DNS-rebinding window).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::ProxyError;
use crate::host::Host;

/// A lookup that takes longer is reported as a 502, not left hanging.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// System DNS, consulted after an optional extra hosts file (`PAUDE_PROXY_HOSTS_FILE`).
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    hosts: HashMap<Host, Vec<IpAddr>>,
}

impl Resolver {
    pub fn with_hosts(hosts: HashMap<Host, Vec<IpAddr>>) -> Resolver {
        Resolver { hosts }
    }

    pub async fn lookup(&self, host: &Host) -> Result<Vec<IpAddr>, ProxyError> {
        if let Some(ip) = host.ip() {
            return Ok(vec![ip]);
        }
        if let Some(addrs) = self.hosts.get(host) {
            return Ok(addrs.clone());
        }
        let err = |detail: String| ProxyError::Resolve {
            host: host.to_string(),
            detail,
        };
        let found =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), 0)))
                .await
                .map_err(|_| err(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
                .map_err(|e| err(e.to_string()))?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a.ip()) {
                addrs.push(a.ip());
            }
        }
        Ok(addrs)
    }
}

/// Whether `ip` is an address of this host (in this network namespace): only a local
/// address can be bound. Asked only when a destination port is one of our listeners'.
pub fn is_local_addr(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Parses `/etc/hosts` format: `ADDR NAME [NAME...]`, `#` comments. Errors name the line.
pub fn parse_hosts_file(path: &Path) -> Result<HashMap<Host, Vec<IpAddr>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_hosts(&text).map_err(|(n, why)| format!("{} line {n}: {why}", path.display()))
}

pub(crate) fn parse_hosts(text: &str) -> Result<HashMap<Host, Vec<IpAddr>>, (usize, String)> {
    let mut map: HashMap<Host, Vec<IpAddr>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(addr) = words.next() else { continue };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| (i + 1, format!("'{addr}' is not an IP address")))?;
        let mut any = false;
        for name in words {
            let host = Host::parse(name).map_err(|e| (i + 1, format!("'{name}': {e}")))?;
            map.entry(host).or_default().push(ip);
            any = true;
        }
        if !any {
            return Err((i + 1, "an address without a name".into()));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_format() {
        let m = parse_hosts("# c\n127.0.0.1 API.example.test a.test # x\n\n::1 a.test\n").unwrap();
        let h = Host::parse("api.example.test").unwrap();
        assert_eq!(m[&h], vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(m[&Host::parse("a.test").unwrap()].len(), 2);
        assert_eq!(parse_hosts("x y").unwrap_err().0, 1);
        assert_eq!(parse_hosts("\n1.2.3.4").unwrap_err().0, 2);
    }

    #[test]
    fn local_addresses_are_recognised_without_sending_anything() {
        assert!(is_local_addr("127.0.0.1".parse().unwrap()));
        // TEST-NET-1 is never assigned to a host; binding it fails locally.
        assert!(!is_local_addr("192.0.2.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn file_entries_win_and_literals_resolve_to_themselves() {
        let r = Resolver::with_hosts(parse_hosts("127.0.0.9 localhost").unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            r.lookup(&Host::parse("localhost").unwrap()).await.unwrap(),
            vec![ip("127.0.0.9")]
        );
        assert_eq!(
            r.lookup(&Host::parse("10.0.0.1").unwrap()).await.unwrap(),
            vec![ip("10.0.0.1")]
        );
    }
}
