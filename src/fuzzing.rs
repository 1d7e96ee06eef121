//! Entry points for the `fuzz/` crate: the parsers the proxy runs on network and config
//! input, reachable without sockets. Not an API: hidden from the docs, it changes with the
//! code it wraps (and, being compiled with the library, breaks the build when that changes).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::Request;
use tokio::io::{AsyncRead, ReadBuf};

pub use crate::client_hello::{ParseError, Parsed, Sni, parse_sni};
pub use crate::config::{Args, Config, ConfigError};
pub use crate::dns::fuzzing::{Answered, DnsHarness, PINNED, SandboxHosts};
pub use crate::headers::check_authority;
pub use crate::host::{DomainPattern, Host, HostError, parse_authority, parse_patterns};
pub use crate::inject::{DEFAULT_CREDENTIALS_JSON, Routes, RoutesError};

use crate::connect::{Form, classify};
use crate::framing::{FramingCheck, Watched};

/// What the explicit listener makes of a request line (see `connect::classify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestForm {
    Connect(Host, u16),
    PlainHttp(Host, u16),
    AbsoluteHttps,
    NotProxy,
}

/// The explicit listener's classification of one request; `Err` is the 400's text.
pub fn classify_request<B>(req: &Request<B>) -> Result<RequestForm, String> {
    match classify(req) {
        Ok(Form::Connect(h, p)) => Ok(RequestForm::Connect(h, p)),
        Ok(Form::PlainHttp(h, p)) => Ok(RequestForm::PlainHttp(h, p)),
        Ok(Form::AbsoluteHttps) => Ok(RequestForm::AbsoluteHttps),
        Ok(Form::NotProxy) => Ok(RequestForm::NotProxy),
        Err(e) => Err(e.to_string()),
    }
}

/// `PAUDE_PROXY_HOSTS_FILE` as the policy's resolver reads it; `Err` names the line.
pub fn parse_hosts_file_text(text: &str) -> Result<HashMap<Host, Vec<IpAddr>>, (usize, String)> {
    crate::resolve::parse_hosts(text)
}

/// A reader that hands out `pieces` one per read, then end of stream.
struct Pieces<'a> {
    pieces: std::slice::Iter<'a, &'a [u8]>,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(piece) = self.pieces.next() {
            // The caller's buffer is big enough for every piece (see `framing_conflict`).
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs the framing watcher over a client stream delivered in `pieces` (one read each) and
/// returns the index of the request it flags, if any: what the handler would refuse.
pub fn framing_conflict(pieces: &[&[u8]]) -> Option<u64> {
    let check = Arc::new(FramingCheck::default());
    let mut watched = Watched::new(
        Pieces {
            pieces: pieces.iter(),
        },
        check.clone(),
    );
    let longest = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut storage = vec![0u8; longest.max(1)];
    let mut cx = Context::from_waker(Waker::noop());
    for _ in pieces {
        let mut buf = ReadBuf::new(&mut storage);
        // `Pieces` is always ready, so this never pends.
        let _ = Pin::new(&mut watched).poll_read(&mut cx, &mut buf);
    }
    // A head ends in a blank line, so there are fewer heads than line feeds.
    let heads = pieces
        .iter()
        .map(|p| p.iter().filter(|b| **b == b'\n').count())
        .sum::<usize>();
    (0..heads as u64).find(|_| check.next_request().is_err())
}

/// `Args` from a command line as `main` parses it (environment variables included).
pub fn parse_args(argv: &[String]) -> Result<Args, String> {
    use clap::Parser;
    Args::try_parse_from(argv).map_err(|e| e.to_string())
}
