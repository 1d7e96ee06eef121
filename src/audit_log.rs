//! The audit log (`PAUDE_PROXY_AUDIT_LOG`): one JSON line per request and per refused
//! connection, written by a background thread so a slow disk never holds up a request.
//! Rotation: the file is reopened on reload (SIGHUP or `POST /reload`), so `mv` then HUP
//! (logrotate's default `create` mode) works. Nothing in a line is a header or body value.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::Serialize;

use crate::metrics::Counter;

/// Lines queued for the writer. Beyond this a line is dropped and counted rather than making
/// the request wait: at ~300 bytes a line this is ~20 MB of backlog, minutes of a stalled disk.
const QUEUE_LINES: usize = 65_536;

/// One audited request or refusal. Every field is plain data we produced or parsed: never
/// a header value, a body byte or a secret. The path has no query (it can carry tokens).
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    pub time: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<&'a str>,
    /// `explicit` or `transparent`.
    pub mode: &'static str,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The request body length as declared (`Content-Length`), when declared.
    pub bytes_up: Option<u64>,
    /// Response body bytes sent to the client.
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// What decided: `rule:ID`, `default`, or the denial kind (`blocked-by-allowlist`, ...).
    pub by: String,
    /// The denial's reason in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The credential route, by variable name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
}

enum Msg {
    Line(String),
    Reopen,
}

/// A file written by a background thread, one line per [`LineFile::write`].
pub struct LineFile {
    tx: SyncSender<Msg>,
    pub dropped: Counter,
}

impl LineFile {
    /// Opens (creating, appending) now, so a bad path is a startup error.
    pub fn open(path: &Path) -> io::Result<LineFile> {
        let file = open_append(path)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("paude-line-writer".into())
            .spawn(move || writer(path, file, rx))?;
        Ok(LineFile {
            tx,
            dropped: Counter::default(),
        })
    }

    pub fn write(&self, mut line: String) {
        line.push('\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.inc();
        }
    }

    /// Closes and reopens the file by its path (after a rotation moved it away).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn writer(path: PathBuf, file: File, rx: Receiver<Msg>) {
    let mut out = BufWriter::new(file);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Drain what is queued, then flush once: few syscalls under load, prompt when idle.
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            match msg {
                Msg::Line(l) => {
                    if let Err(e) = out.write_all(l.as_bytes()) {
                        tracing::warn!(file = %path.display(), "cannot write: {e}");
                    }
                }
                Msg::Reopen => {
                    let _ = out.flush();
                    match open_append(&path) {
                        Ok(f) => out = BufWriter::new(f),
                        Err(e) => tracing::warn!(file = %path.display(), "cannot reopen: {e}"),
                    }
                }
            }
        }
        if let Err(e) = out.flush() {
            tracing::warn!(file = %path.display(), "cannot write: {e}");
        }
    }
}

/// The audit log proper.
pub struct AuditLog {
    file: LineFile,
}

impl AuditLog {
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        Ok(AuditLog {
            file: LineFile::open(path)?,
        })
    }

    pub fn record(&self, event: &AuditEvent<'_>) {
        match serde_json::to_string(event) {
            Ok(line) => self.file.write(line),
            Err(e) => tracing::warn!("audit line not written: {e}"),
        }
    }

    pub fn reopen(&self) {
        self.file.reopen();
    }

    pub fn dropped(&self) -> u64 {
        self.file.dropped.get()
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let ev = AuditEvent {
            time: now_rfc3339(),
            client: "10.0.0.5".into(),
            agent: None,
            mode: "explicit",
            host: "api.github.com",
            port: 443,
            method: "GET",
            path: "/x",
            status: 200,
            bytes_up: None,
            bytes_down: 12,
            duration_ms: 3,
            decision: "allow",
            by: "default".into(),
            reason: None,
            credential: Some("GH_TOKEN"),
        };
        log.record(&ev);
        let wait_for = |p: &Path, n: usize| {
            for _ in 0..500 {
                if std::fs::read_to_string(p)
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
                    >= n
                {
                    return std::fs::read_to_string(p).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("{} never got {n} lines", p.display());
        };
        let text = wait_for(&path, 1);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["host"], "api.github.com");
        assert_eq!(v["credential"], "GH_TOKEN");
        assert!(v.get("agent").is_none());
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.record(&ev);
        wait_for(&path, 1);
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1
        );
    }
}
