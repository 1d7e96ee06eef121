//! An HTTP/2 client bound to one CONNECT tunnel: CONNECT, TLS with the proxy's leaf, then
//! hyper's h2 client. Every clone of its sender is a new stream on the same connection, so
//! concurrent requests really multiplex.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::{self, TestBody};
use super::client::{authority, connect_tunnel, timeout, tls_over};
use super::proxy::Proxy;

pub struct H2Client {
    sender: http2::SendRequest<TestBody>,
    host: String,
    port: u16,
    /// The ALPN protocol the proxy chose (`None` if none was offered or agreed).
    pub alpn: Option<Vec<u8>>,
}

impl H2Client {
    /// Offers ALPN `h2` only: the proxy must choose it.
    pub async fn open(proxy: &Proxy, host: &str, port: u16) -> Self {
        Self::open_with_alpn(proxy, host, port, &[b"h2"]).await
    }

    /// Offers no ALPN at all and starts HTTP/2 with prior knowledge (the connection preface
    /// straight after the TLS handshake).
    pub async fn open_prior_knowledge(proxy: &Proxy, host: &str, port: u16) -> Self {
        Self::open_with_alpn(proxy, host, port, &[]).await
    }

    async fn open_with_alpn(proxy: &Proxy, host: &str, port: u16, alpn: &[&[u8]]) -> Self {
        let target = authority(host, port);
        let tcp = connect_tunnel(proxy.addr(), &target)
            .await
            .unwrap_or_else(|r| panic!("CONNECT {target} refused: {r:?}"));
        let tls = tls_over(tcp, host, &proxy.ca_cert_pem(), alpn).await;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (sender, conn) = timeout(
            "HTTP/2 handshake with the proxy",
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(tls)),
        )
        .await
        .expect("HTTP/2 handshake with the proxy");
        tokio::spawn(async move {
            // Ends when the test drops every sender or the proxy closes the connection.
            let _ = conn.await;
        });
        H2Client {
            sender,
            host: host.to_owned(),
            port,
            alpn,
        }
    }

    /// `https://host:port{path}`: hyper turns it into `:scheme`, `:authority` and `:path`.
    pub fn uri(&self, path: &str) -> String {
        format!("https://{}{path}", authority(&self.host, self.port))
    }

    /// A request builder whose `:authority` is the tunnel's own host.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(self.uri(path))
    }

    /// Sends one request on a new stream. Errors (a reset stream, a closed connection) are
    /// returned, because some tests expect them.
    pub async fn try_send(&self, request: Request<TestBody>) -> Result<Response<Incoming>, String> {
        let mut sender = self.sender.clone();
        timeout("h2 sender ready", sender.ready())
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        timeout("h2 response head", sender.send_request(request))
            .await
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn send(&self, request: Request<TestBody>) -> Response<Incoming> {
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("h2 request failed: {e}"))
    }

    pub async fn get(&self, path: &str) -> Response<Incoming> {
        let request = self
            .request("GET", path)
            .body(body::empty())
            .expect("request");
        self.send(request).await
    }
}
