//! UDP and TCP transports for the sandbox DNS server: bounded reads, bounded concurrency,
//! named timeouts. Every query is handled in its own task so one slow upstream lookup
//! never stalls other clients.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::answer::{Handler, Reply};

/// Largest query accepted. Real queries are well under 512 bytes even with EDNS options;
/// anything bigger is abuse or garbage.
const MAX_QUERY_BYTES: usize = 1024;
/// UDP queries being resolved at once; beyond this new packets are dropped (and counted)
/// instead of queueing without bound.
const MAX_INFLIGHT_UDP: usize = 512;
/// Concurrent TCP connections.
const MAX_TCP_CONNECTIONS: usize = 128;
/// Time allowed to read one framed TCP message, and the idle time between messages.
const TCP_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write one TCP reply to a client that stopped reading.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Runs both transports until `shutdown` completes or a socket fails for good.
/// In-flight queries and connections are aborted when this returns.
pub(crate) async fn run(
    handler: Arc<Handler>,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: impl Future,
) -> io::Result<()> {
    tokio::select! {
        result = udp_loop(handler.clone(), Arc::new(udp)) => result,
        result = tcp_loop(handler, tcp) => result,
        _ = shutdown => Ok(()),
    }
}

async fn udp_loop(handler: Arc<Handler>, socket: Arc<UdpSocket>) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_INFLIGHT_UDP));
    let mut tasks = JoinSet::new();
    // One byte more than allowed, so an oversized datagram is seen as oversized rather than
    // silently cut to an acceptable length.
    let mut buf = vec![0u8; MAX_QUERY_BYTES + 1];
    loop {
        while tasks.try_join_next().is_some() {}
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) if is_transient(&err) => continue,
            Err(err) => return Err(err),
        };
        if len > MAX_QUERY_BYTES {
            handler.stats.oversized();
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.stats.overloaded();
            continue;
        };
        let packet = buf[..len].to_vec();
        let (handler, socket) = (handler.clone(), socket.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let Some(reply) = handler.handle(peer.ip(), &packet).await else {
                return;
            };
            if let Some(bytes) = finish_udp(&handler, peer.ip(), reply)
                && let Err(err) = socket.send_to(&bytes, peer).await
            {
                tracing::debug!(%peer, %err, "DNS reply not sent");
            }
        });
    }
}

/// Encodes for UDP; a reply over the client's size limit goes out truncated (TC set, no
/// records) so the client retries over TCP, and its addresses are not recorded as given.
pub(super) fn finish_udp(handler: &Handler, client: IpAddr, reply: Reply) -> Option<Vec<u8>> {
    let full = encode(&reply.message)?;
    if full.len() <= reply.udp_limit {
        if let Some(given) = &reply.given {
            handler.note_given(client, given);
        }
        return Some(full);
    }
    encode(&reply.message.truncate())
}

async fn tcp_loop(handler: Arc<Handler>, listener: TcpListener) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(%err, "DNS accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.stats.overloaded();
            continue; // dropping `stream` closes it
        };
        let handler = handler.clone();
        tasks.spawn(async move {
            let _permit = permit;
            serve_tcp(&handler, stream, peer).await;
        });
    }
}

/// RFC 7766 framing: 2-byte length, message; several queries per connection, in order.
/// Any framing problem, timeout or malformed message closes the connection.
async fn serve_tcp(handler: &Handler, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let len = match tokio::time::timeout(TCP_READ_TIMEOUT, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return, // EOF, reset or idle
        };
        if len == 0 {
            handler.stats.malformed();
            return;
        }
        if len > MAX_QUERY_BYTES {
            handler.stats.oversized();
            return;
        }
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(TCP_READ_TIMEOUT, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = handler.handle(peer.ip(), &packet).await else {
            return;
        };
        let Some(frame) = finish_tcp(handler, peer.ip(), reply) else {
            return;
        };
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Encodes with the 2-byte length prefix. A reply too big for TCP framing (impossible with
/// real upstream answers, but not for us to assume) becomes SERVFAIL.
pub(super) fn finish_tcp(handler: &Handler, client: IpAddr, reply: Reply) -> Option<Vec<u8>> {
    let mut message = reply.message;
    let mut body = encode(&message)?;
    match u16::try_from(body.len()) {
        Ok(_) => {
            if let Some(given) = &reply.given {
                handler.note_given(client, given);
            }
        }
        Err(_) => {
            message.answers.clear();
            message.authorities.clear();
            message.additionals.clear();
            message.metadata.response_code = ResponseCode::ServFail;
            body = encode(&message)?;
        }
    }
    let len = u16::try_from(body.len()).ok()?;
    let mut frame = Vec::with_capacity(body.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Some(frame)
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::warn!(%err, "DNS reply could not be encoded; dropped");
            None
        }
    }
}

/// Errors a UDP socket reports for one peer (e.g. an ICMP unreachable for an earlier reply)
/// rather than for the socket itself.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
