//! WebSockets: the upstream's `/ws` echo (a real RFC 6455 handshake answered by hyper, then
//! tokio-tungstenite echoing every data message) and a client that opens a WebSocket through
//! a CONNECT tunnel with the proxy's TLS leaf.

use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use futures_util::{SinkExt, StreamExt};

use super::body::{self, TestBody};
use super::client::{authority, connect_tunnel, timeout, tls_over};
use super::proxy::Proxy;
use super::upstream::Recorded;

/// Answers a recorded `/ws` request: 101 with the accept key if it is a WebSocket handshake
/// (then echoes on the upgraded connection), 400 otherwise.
pub fn echo_upgrade(record: &Recorded, on_upgrade: OnUpgrade) -> Response<TestBody> {
    let key = record.header_values("sec-websocket-key").into_iter().next();
    let is_upgrade = record
        .header_values("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(body::full("not a WebSocket handshake\n"))
            .expect("response");
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            let echo = match message {
                Message::Text(_) | Message::Binary(_) => message,
                // tungstenite answers pings and close frames itself.
                _ => continue,
            };
            if socket.send(echo).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(body::empty())
        .expect("response")
}

pub type ClientSocket = WebSocketStream<TlsStream<TcpStream>>;

/// Opens `wss://host:port/ws` through the proxy (CONNECT, TLS with ALPN http/1.1, then the
/// WebSocket handshake) sending `headers` with the handshake. The error is tungstenite's,
/// e.g. `Error::Http(response)` when the proxy answers 502 instead of 101.
pub async fn connect(
    proxy: &Proxy,
    host: &str,
    port: u16,
    headers: &[(&str, &str)],
) -> Result<(ClientSocket, WsResponse), tungstenite::Error> {
    let authority = authority(host, port);
    let tcp = connect_tunnel(proxy.addr(), &authority)
        .await
        .unwrap_or_else(|r| panic!("CONNECT {authority} refused: {r:?}"));
    let tls = tls_over(tcp, host, &proxy.ca_cert_pem(), &[b"http/1.1"]).await;
    let mut request = format!("wss://{authority}/ws")
        .into_client_request()
        .expect("WebSocket request");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    timeout(
        "WebSocket handshake",
        tokio_tungstenite::client_async(request, tls),
    )
    .await
}

/// Sends `message` and returns the next data message the peer sends back.
pub async fn round_trip(socket: &mut ClientSocket, message: Message) -> Message {
    timeout("WebSocket send", socket.send(message))
        .await
        .expect("send WebSocket message");
    loop {
        let reply = timeout("WebSocket reply", socket.next())
            .await
            .expect("WebSocket closed before the echo")
            .expect("WebSocket read");
        if matches!(reply, Message::Text(_) | Message::Binary(_)) {
            return reply;
        }
    }
}
