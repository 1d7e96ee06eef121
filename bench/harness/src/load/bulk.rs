//! Bulk throughput over one connection: `--download N` reads N bytes from `/bytes/N`,
//! `--upload N` POSTs N bytes to `/upload` (which answers with the count it received).

use std::time::Duration;

use tokio::time::Instant;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::marker;
use crate::BULK_CHUNK;
use crate::args::Args;

/// Slowest throughput tolerated (bytes/s) before a transfer counts as stuck; it bounds
/// the run even for a pathological peer.
const MIN_RATE: u64 = 2 * 1024 * 1024;

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let (upload, bytes) = match (args.opt("download"), args.opt("upload")) {
        (Some(n), None) => (false, n),
        (None, Some(n)) => (true, n),
        _ => return Err("exactly one of --download N and --upload N".into()),
    };
    let bytes: u64 = bytes
        .parse()
        .map_err(|_| format!("bad byte count {bytes}"))?;
    let limit = super::IO_TIMEOUT + Duration::from_secs(bytes / MIN_RATE);
    let mut conn = H1::new(
        dialer
            .open(Alpn::H1)
            .await
            .map_err(|e| format!("open: {e}"))?,
    );
    marker("MEASURE_START");
    let t0 = Instant::now();
    let transfer = async {
        let (status, got) = if upload {
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: {bytes}\r\nContent-Type: application/octet-stream\r\n\r\n",
                dialer.authority, dialer.auth
            );
            conn.send(head.as_bytes()).await?;
            let chunk = vec![b'u'; BULK_CHUNK];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(BULK_CHUNK as u64) as usize;
                conn.write_body(&chunk[..n]).await?;
                left -= n as u64;
            }
            conn.flush().await?;
            let mut answer = Vec::new();
            let r = conn.read_response(|b| answer.extend_from_slice(b)).await?;
            let counted = String::from_utf8_lossy(&answer)
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
            (r.status, counted)
        } else {
            let head = get_head(
                &dialer.authority,
                &format!("/bytes/{bytes}"),
                &dialer.auth,
                false,
            );
            conn.send(&head).await?;
            let r = conn.read_response(|_| {}).await?;
            (r.status, r.body_len)
        };
        Ok::<_, std::io::Error>((status, got))
    };
    let (status, got) = tokio::time::timeout(limit, transfer)
        .await
        .map_err(|_| format!("transfer slower than {MIN_RATE} B/s"))?
        .map_err(|e| format!("transfer: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    marker("MEASURE_END");
    if status != 200 || got != bytes {
        return Err(format!("status {status}, {got} of {bytes} bytes"));
    }
    Ok(serde_json::json!({
        "bytes": bytes,
        "secs": secs,
        "mib_s": bytes as f64 / secs / (1024.0 * 1024.0),
    }))
}
