//! Static name -> address tables in /etc/hosts format, consulted before any upstream query.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use super::name::is_hostname;

/// The system hosts file, read when the upstream is the system configuration.
pub(crate) const SYSTEM_HOSTS_PATH: &str = "/etc/hosts";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostsTable {
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl HostsTable {
    /// Parses /etc/hosts syntax: `addr name [alias...]`, `#` comments. Lines with an
    /// unparsable address and invalid names are skipped, like the C library does.
    pub(crate) fn parse(text: &str) -> Self {
        let mut table = Self::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let Some(Ok(addr)) = fields.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            let addr = addr.to_canonical();
            for name in fields {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !is_hostname(&name) {
                    continue;
                }
                let addrs = table.by_name.entry(name).or_default();
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        table
    }

    /// `extra` (PAUDE_PROXY_HOSTS_FILE) must be readable: a typo there would otherwise send
    /// pinned names to the public resolver. `system` may be absent (empty table).
    pub(crate) fn load(extra: Option<&Path>, system: Option<&Path>) -> io::Result<Self> {
        let mut table = match extra {
            Some(path) => Self::parse(&read(path)?),
            None => Self::default(),
        };
        if let Some(path) = system {
            match read(path) {
                Ok(text) => table.add_missing(Self::parse(&text)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(table)
    }

    /// Addresses for `name` (lowercase, no trailing dot), both families. `Some` means the name
    /// is pinned: it is answered from here only, even if the asked family has no entry.
    pub(crate) fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Pins `name` to `addr` ahead of anything the files said.
    pub(crate) fn pin(&mut self, name: &str, addr: IpAddr) {
        self.by_name
            .insert(name.to_ascii_lowercase(), vec![addr.to_canonical()]);
    }

    /// Earlier tables win: a name pinned in the extra file hides its /etc/hosts entries.
    fn add_missing(&mut self, other: Self) {
        for (name, addrs) in other.by_name {
            self.by_name.entry(name).or_insert(addrs);
        }
    }
}

fn read(path: &Path) -> io::Result<String> {
    let bytes = std::fs::read(path).map_err(|err| {
        io::Error::new(err.kind(), format!("hosts file {}: {err}", path.display()))
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_names_aliases_comments_and_both_families() {
        let table = HostsTable::parse(
            "# comment\n\
             192.0.2.10  API.Example.com. alias.example  # trailing\n\
             2001:db8::10 api.example.com\n\
             not-an-ip   broken.example\n\
             192.0.2.11\n\
             192.0.2.12  bad_name!.example good.example\n",
        );
        assert_eq!(
            table.lookup("api.example.com").unwrap(),
            ips(&["192.0.2.10", "2001:db8::10"])
        );
        assert_eq!(table.lookup("alias.example").unwrap(), ips(&["192.0.2.10"]));
        assert_eq!(table.lookup("good.example").unwrap(), ips(&["192.0.2.12"]));
        assert!(table.lookup("broken.example").is_none());
        assert!(table.lookup("bad_name!.example").is_none());
    }

    #[test]
    fn extra_file_hides_system_entries_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("extra");
        let system = dir.path().join("system");
        std::fs::write(&extra, "192.0.2.1 pinned.example\n").unwrap();
        std::fs::write(
            &system,
            "192.0.2.2 pinned.example\n192.0.2.3 other.example\n",
        )
        .unwrap();

        let table = HostsTable::load(Some(&extra), Some(&system)).unwrap();
        assert_eq!(table.lookup("pinned.example").unwrap(), ips(&["192.0.2.1"]));
        assert_eq!(table.lookup("other.example").unwrap(), ips(&["192.0.2.3"]));

        let missing = dir.path().join("missing");
        let err = HostsTable::load(Some(&missing), None).unwrap_err();
        assert!(
            err.to_string().contains("missing"),
            "error names the path: {err}"
        );
        assert!(
            HostsTable::load(None, Some(&missing))
                .unwrap()
                .lookup("x")
                .is_none()
        );
    }
}
