//! A client that offered no ALPN speaks h2 with prior knowledge or HTTP/1.1; its first
//! bytes tell which.
//!
//! Telling them apart here, instead of in hyper-util's auto builder, lets such a client take
//! the same two serving paths as one that used ALPN: HTTP/1.1 parks while idle and has its
//! head limit checked on the parsed head (the auto builder offers neither).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// RFC 9113 §3.4: what an h2 client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoken {
    H2,
    Http1,
}

/// Reads no more than the preface's 24 bytes, and only until the bytes read either are the
/// whole preface or stop matching it. Returns the protocol and the bytes (to be replayed),
/// or `None` if the client closed first. The caller bounds the wait.
pub async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Option<(Spoken, Vec<u8>)>> {
    let mut got = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let want = H2_PREFACE.len() - got.len();
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        got.extend_from_slice(&buf[..n]);
        if !H2_PREFACE.starts_with(&got) {
            return Ok(Some((Spoken::Http1, got)));
        }
        if got.len() == H2_PREFACE.len() {
            return Ok(Some((Spoken::H2, got)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Each case is written in the given pieces; the answer and the bytes taken.
    async fn run(pieces: &[&[u8]], close: bool) -> Option<(Spoken, Vec<u8>)> {
        let (mut ours, mut theirs) = tokio::io::duplex(256);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in pieces {
                theirs.write_all(&p).await.unwrap();
                tokio::task::yield_now().await;
            }
            if !close {
                // Keep the stream open: sniff must decide without waiting for more.
                std::future::pending::<()>().await;
            }
        });
        let got = sniff(&mut ours).await.unwrap();
        writer.abort();
        got
    }

    #[tokio::test]
    async fn the_preface_whole_or_in_pieces_is_h2() {
        for split in [1, 3, 10, 23] {
            let (a, b) = H2_PREFACE.split_at(split);
            let got = run(&[a, b, b"\x00\x00\x12\x04"], false).await;
            assert_eq!(
                got,
                Some((Spoken::H2, H2_PREFACE.to_vec())),
                "split at {split}"
            );
        }
    }

    #[tokio::test]
    async fn anything_else_is_http1_decided_at_the_first_byte_that_differs() {
        let got = run(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], false).await;
        assert_eq!(
            got,
            Some((Spoken::Http1, b"GET / HTTP/1.1\r\nHost: a\r".to_vec()))
        );
        // "PRI" is also a method name: it differs from the preface only later.
        let got = run(&[b"PR", b"I /x HTTP/1.1\r\n"], false).await;
        assert_eq!(got, Some((Spoken::Http1, b"PRI /x HTTP/1.1\r\n".to_vec())));
    }

    #[tokio::test]
    async fn a_client_that_closes_first_is_none() {
        assert_eq!(run(&[], true).await, None);
        assert_eq!(run(&[b"PRI * HT"], true).await, None);
    }
}
