//! Bounded read of a ClientHello from a client connection.
//!
//! Reads until `parse_sni` decides, never more than a byte limit and never
//! longer than a timeout: before the handshake nothing about the client is
//! known, so an unbounded wait or buffer is a free resource-exhaustion lever.

use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::parse::{MAX_CLIENT_HELLO_WIRE_LEN, ParseError, Parsed, Sni, parse_sni};

/// How long a client may take to send its whole ClientHello. Real clients
/// send it at once; a slow trickle is a slowloris, and ten seconds covers
/// lossy links with a retransmission or two.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes asked of the socket per read. Larger than a typical ClientHello, so
/// the common case is one read.
const READ_CHUNK_LEN: usize = 4096;

/// Bounds on one ClientHello read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most bytes read from the client before giving up.
    pub max_bytes: usize,
    /// Deadline for the whole read, not per read call.
    pub timeout: Duration,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_bytes: MAX_CLIENT_HELLO_WIRE_LEN,
            timeout: CLIENT_HELLO_TIMEOUT,
        }
    }
}

/// Why no server name could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("ClientHello still incomplete after {limit} bytes")]
    TooLarge { limit: usize },
    #[error("connection closed after {read} bytes, before the ClientHello was complete")]
    Eof { read: usize },
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Reads from `io` until the ClientHello is decided, and returns the answer
/// with every byte read, for replay into the TLS acceptor with
/// [`super::Replay`].
///
/// On error the bytes are dropped; use [`read_client_hello_into`] to keep
/// them, e.g. to serve a connection that turned out to be plain HTTP.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    limits: &ReadLimits,
) -> Result<(Sni, Vec<u8>), ReadError> {
    let mut buf = Vec::new();
    let sni = read_client_hello_into(io, &mut buf, limits).await?;
    Ok((sni, buf))
}

/// Like [`read_client_hello`], but appends to `buf`, which holds every byte
/// read whether or not the read succeeds. Bytes already in `buf` (for example
/// from an earlier peek) count as the start of the connection.
pub async fn read_client_hello_into<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    limits: &ReadLimits,
) -> Result<Sni, ReadError> {
    tokio::time::timeout(
        limits.timeout,
        read_until_decided(io, buf, limits.max_bytes),
    )
    .await
    .unwrap_or(Err(ReadError::Timeout(limits.timeout)))
}

/// Cancel-safe with respect to `buf`: bytes are appended only after a read
/// completes, so a timeout leaves exactly what was received.
async fn read_until_decided<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> Result<Sni, ReadError> {
    loop {
        if !buf.is_empty()
            && let Parsed::Complete(sni) = parse_sni(buf)?
        {
            return Ok(sni);
        }
        let room = max_bytes.saturating_sub(buf.len()).min(READ_CHUNK_LEN);
        if room == 0 {
            return Err(ReadError::TooLarge { limit: max_bytes });
        }
        // Straight into `buf`'s spare room, not through a chunk array: such an array would
        // be part of the connection task's future, which keeps its largest state's size for
        // the connection's whole life (4 KiB more per idle transparent connection).
        // `read_buf` appends only once a read completes, which keeps the cancel safety.
        buf.reserve(room);
        let n = io.read_buf(&mut (&mut *buf).limit(room)).await?;
        if n == 0 {
            return Err(ReadError::Eof { read: buf.len() });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf, duplex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::rustls::{self, pki_types};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::client_hello::Replay;
    use crate::client_hello::testing::fixture;

    const PIPE_CAPACITY: usize = 64 * 1024;
    /// Fails a hung test instead of blocking the suite; never a pass criterion.
    const TEST_TIMEOUT: Duration = Duration::from_secs(30);
    const CHUNK: usize = 7;

    fn name_of(sni: &Sni) -> &str {
        match sni {
            Sni::Name(name) => name.as_str(),
            Sni::Absent => panic!("expected a name, got {sni:?}"),
        }
    }

    /// The name the pure parser finds in the whole captured hello (which name each
    /// fixture carries is pinned in tests/client_hello_fixtures.rs): reading it in
    /// pieces must find the same one.
    fn whole_name(hello: &[u8]) -> String {
        match crate::client_hello::parse_sni(hello) {
            Ok(crate::client_hello::Parsed::Complete(sni)) => name_of(&sni).to_string(),
            other => panic!("the fixture does not parse whole: {other:?}"),
        }
    }

    /// Reports each non-empty read on a channel, so the writer can wait for
    /// the reader to take a chunk before sending the next: every chunk then
    /// arrives in its own read, deterministically.
    struct ReadTap<R> {
        inner: R,
        reads: mpsc::UnboundedSender<usize>,
        count: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for ReadTap<R> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
            let n = buf.filled().len() - before;
            if n > 0 {
                this.count += 1;
                let _ = this.reads.send(n);
            }
            poll
        }
    }

    #[tokio::test]
    async fn reads_a_multi_record_hello_sent_in_small_tcp_chunks() {
        let hello = fixture("openssl_multi_record_max_send_frag.bin");
        let trailer = b"\x17\x03\x03\x00\x01!"; // a record sent after the hello
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reads_tx, mut reads_rx) = mpsc::unbounded_channel();

        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut chunks = 0;
            for piece in hello.chunks(CHUNK) {
                stream.write_all(piece).await.unwrap();
                chunks += 1;
                // Pause until the server has read something: the next chunk
                // cannot be coalesced with this one.
                reads_rx.recv().await.expect("server reads");
            }
            // Keep the socket open until the server has decided.
            let mut rest = Vec::new();
            stream.write_all(trailer).await.unwrap();
            let _ = stream.read_to_end(&mut rest).await;
            chunks
        });

        let (tcp, _) = tokio::time::timeout(TEST_TIMEOUT, listener.accept())
            .await
            .expect("test timeout")
            .unwrap();
        let mut tapped = ReadTap {
            inner: tcp,
            reads: reads_tx,
            count: 0,
        };
        let (sni, bytes) = tokio::time::timeout(
            TEST_TIMEOUT,
            read_client_hello(&mut tapped, &ReadLimits::default()),
        )
        .await
        .expect("test timeout")
        .expect("hello read");
        assert_eq!(name_of(&sni), whole_name(hello));
        assert_eq!(bytes, hello, "returns exactly the bytes read, in order");
        let reads = tapped.count;
        drop(tapped);
        let chunks = tokio::time::timeout(TEST_TIMEOUT, client)
            .await
            .expect("test timeout")
            .unwrap();
        assert_eq!(chunks, hello.len().div_ceil(CHUNK));
        assert!(reads >= chunks, "{reads} reads for {chunks} chunks");
    }

    #[tokio::test]
    async fn replayed_bytes_complete_a_real_rustls_handshake() {
        let server_name = "api.example.test";
        let issued = rcgen::generate_simple_self_signed(vec![server_name.to_string()]).unwrap();
        let cert = issued.cert.der().clone();
        let key = pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(
            issued.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = pki_types::ServerName::try_from(server_name).unwrap();
            let mut tls = TlsConnector::from(Arc::new(client_config))
                .connect(name, tcp)
                .await
                .expect("client handshake");
            tls.write_all(b"ping").await.unwrap();
            let mut reply = [0u8; 4];
            tls.read_exact(&mut reply).await.unwrap();
            reply
        });

        let server = async {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let (sni, bytes) = read_client_hello(&mut tcp, &ReadLimits::default())
                .await
                .expect("hello read");
            let mut tls = TlsAcceptor::from(Arc::new(server_config))
                .accept(Replay::new(bytes, tcp))
                .await
                .expect("server handshake over replayed bytes");
            assert_eq!(tls.get_ref().1.server_name(), Some(name_of(&sni)));
            let mut ping = [0u8; 4];
            tls.read_exact(&mut ping).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
            (sni, ping)
        };
        let (sni, ping) = tokio::time::timeout(TEST_TIMEOUT, server)
            .await
            .expect("test timeout");
        assert_eq!(name_of(&sni), server_name);
        assert_eq!(&ping, b"ping");
        let reply = tokio::time::timeout(TEST_TIMEOUT, client)
            .await
            .expect("test timeout")
            .unwrap();
        assert_eq!(&reply, b"pong");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_times_out_and_keeps_what_it_sent() {
        let hello = fixture("curl_sni.bin");
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(&hello[..10]).await.unwrap();
        // `theirs` stays open and silent: with the clock paused, tokio jumps
        // straight to the deadline once every task is idle.
        let mut buf = Vec::new();
        let started = tokio::time::Instant::now();
        let err = read_client_hello_into(&mut ours, &mut buf, &ReadLimits::default())
            .await
            .expect_err("must time out");
        assert!(
            matches!(err, ReadError::Timeout(t) if t == CLIENT_HELLO_TIMEOUT),
            "{err}"
        );
        assert!(
            started.elapsed() >= CLIENT_HELLO_TIMEOUT,
            "not before the deadline"
        );
        assert_eq!(buf, &hello[..10]);
        drop(theirs);
    }

    #[tokio::test]
    async fn eof_before_the_hello_is_complete() {
        let hello = fixture("python_sni.bin");
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(&hello[..hello.len() - 1]).await.unwrap();
        drop(theirs);
        let err = read_client_hello(&mut ours, &ReadLimits::default())
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, ReadError::Eof { read } if read == hello.len() - 1),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stops_at_the_byte_limit() {
        let hello = fixture("openssl_multi_record_max_send_frag.bin");
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(hello).await.unwrap();
        let limits = ReadLimits {
            max_bytes: 1000,
            ..ReadLimits::default()
        };
        let mut buf = Vec::new();
        let err = read_client_hello_into(&mut ours, &mut buf, &limits)
            .await
            .expect_err("must fail");
        assert!(matches!(err, ReadError::TooLarge { limit: 1000 }), "{err}");
        assert_eq!(buf, &hello[..1000], "never reads past the limit");
    }

    #[tokio::test]
    async fn an_oversized_hello_is_refused_from_its_header() {
        let hello = fixture("openssl_oversized_alpn.bin");
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(&hello[..9]).await.unwrap();
        // Only the headers were sent: the refusal must not wait for the rest.
        let err = read_client_hello(&mut ours, &ReadLimits::default())
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, ReadError::Parse(ParseError::TooLarge { .. })),
            "{err}"
        );
        drop(theirs);
    }

    #[tokio::test]
    async fn plain_http_is_reported_with_its_bytes_for_fallback() {
        let request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        let err = read_client_hello_into(&mut ours, &mut buf, &ReadLimits::default())
            .await
            .expect_err("not TLS");
        assert!(
            matches!(err, ReadError::Parse(ParseError::NotTls { .. })),
            "{err}"
        );
        // The caller can now serve HTTP from the first byte.
        drop(theirs);
        let mut replayed = Vec::new();
        let mut replay = Replay::new(buf, ours);
        tokio::time::timeout(TEST_TIMEOUT, replay.read_to_end(&mut replayed))
            .await
            .expect("test timeout")
            .unwrap();
        assert_eq!(replayed, request);
    }

    #[tokio::test]
    async fn bytes_already_peeked_count_as_the_start() {
        let hello = fixture("node_sni.bin");
        let (mut ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(&hello[1..]).await.unwrap();
        let mut buf = hello[..1].to_vec();
        let sni = read_client_hello_into(&mut ours, &mut buf, &ReadLimits::default())
            .await
            .unwrap();
        assert_eq!(name_of(&sni), whole_name(hello));
        assert_eq!(buf, hello);
        drop(theirs);
    }
}
