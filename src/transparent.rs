//! Transparent entry: TCP that nftables redirected to us. The original destination comes
//! from `SO_ORIGINAL_DST`, the name from the ClientHello's SNI (or the `Host` header for
//! plain HTTP), and the two must agree before the same policy and pipeline as explicit mode
//! take over.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::App;
use crate::body::Body;
use crate::client_hello::{self, ParseError, ReadError, ReadLimits, Replay, Sni};
use crate::conns::{self, ConnHandle};
use crate::dns::Evidence;
use crate::error::ProxyError;
use crate::framing::{FramingCheck, Watched};
use crate::gate::{Mode, Refusal, RequestCtx};
use crate::headers;
use crate::host::{Host, parse_authority};
use crate::intercept::{Credentials, MAX_HEAD_BYTES, Tunnel, serve_denied, serve_tunnel};
use crate::orig_dst::original_dst;
use crate::policy::{self, DenyReason, Entry, Facts, Target};
use crate::resolve::is_local_addr;
use crate::upstream::Scheme;
use crate::vend::{Ctx, Via};

/// Plain HTTP on a redirected connection: the request head must arrive in this time.
const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve_redirected(
    app: Arc<App>,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    conn: ConnHandle,
) {
    let _ = stream.set_nodelay(true);
    app.metrics.connections_transparent.inc();
    let client = peer.ip().to_canonical();
    let orig = match original_dst(&stream, peer) {
        // A connection made straight to our port was not redirected: serving it would
        // make the proxy dial itself.
        Ok(a) if a == local || a.ip().is_unspecified() => {
            tracing::info!(%client, "refused: a direct connection to the transparent port (not redirected)");
            return;
        }
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%client, "refused: no original destination ({e}); is the nft redirect rule in place?");
            return;
        }
    };
    if !policy::client_allowed(&app.policy.load(), client) {
        let at = Refusal {
            mode: Mode::Transparent,
            client,
            method: "CONNECT",
            what: orig.to_string(),
            host: None,
            port: orig.port(),
            path: "",
        };
        app.deny(&at, DenyReason::ClientNotAllowed(client));
        return;
    }
    let mut buf = Vec::new();
    let limits = ReadLimits::default();
    match client_hello::read_client_hello_into(&mut stream, &mut buf, &limits).await {
        Ok(sni) => tls(app, Replay::new(buf, stream), client, orig, sni, conn).await,
        // Boxed: its inline hyper connection would otherwise size the task of every
        // connection that reads a ClientHello, not only the plain-HTTP ones.
        Err(ReadError::Parse(ParseError::NotTls { .. })) => {
            Box::pin(plain_http(
                app,
                Replay::new(buf, stream),
                client,
                orig,
                conn,
            ))
            .await
        }
        Err(e) => {
            let at = Refusal {
                mode: Mode::Transparent,
                client,
                method: "CONNECT",
                what: orig.to_string(),
                host: None,
                port: orig.port(),
                path: "",
            };
            app.deny(&at, DenyReason::BadClientHello(e.to_string()));
        }
    }
}

async fn tls(
    app: Arc<App>,
    io: Replay<TcpStream>,
    client: IpAddr,
    orig: SocketAddr,
    sni: Sni,
    conn: ConnHandle,
) {
    let (host, no_sni) = match sni {
        Sni::Name(n) => match Host::parse(n.as_str()) {
            Ok(h) => (h, false),
            Err(e) => {
                tracing::info!(%client, dst = %orig, "refused: SNI is not a usable host name: {e}");
                return;
            }
        },
        // No SNI: only an IP-literal allow rule can permit it, and only to that IP.
        Sni::Absent => (Host::from_ip(orig.ip()), true),
    };
    let what = host.with_port(orig.port());
    let facts = Facts {
        client,
        host: host.clone(),
        port: orig.port(),
        entry: Entry::Tls,
    };
    let decided = approve(&app, &facts, orig)
        .await
        .map_err(|reason| match reason {
            DenyReason::DomainNotAllowed(_) if no_sni => DenyReason::NoSni(orig.ip()),
            r => r,
        });
    let target = match decided {
        Ok(t) => t,
        Err(reason) => {
            let at = Refusal {
                mode: Mode::Transparent,
                client,
                method: "CONNECT",
                what,
                host: Some(&host),
                port: orig.port(),
                path: "",
            };
            let err = app.deny(&at, reason);
            // Finish the handshake and answer 403 with the reason: clearer for the agent
            // than a reset, and nothing goes upstream.
            serve_denied(app, io, host, err, conn).await;
            return;
        }
    };
    // Credentials need a name that TLS verification can check; a bare IP gets none.
    let credentials = if no_sni {
        Credentials::Never
    } else {
        Credentials::Eligible
    };
    let routes = app.routes.load();
    tracing::info!(
        %client,
        target = %what,
        addr = %target,
        credential = match credentials {
            Credentials::Eligible => routes.serves(&target.host).unwrap_or("-"),
            Credentials::Never => "-",
        },
        "allow transparent TLS"
    );
    // A guard is not held across the tunnel's life.
    drop(routes);
    let tunnel = Tunnel {
        mode: Mode::Transparent,
        client,
        target,
        credentials,
        conn,
    };
    // A task of its own, as an explicit CONNECT tunnel gets: this connection's task is
    // sized for reading the ClientHello and deciding, and carries the `conn` span; an
    // intercepted connection that idles for minutes needs neither (4.9 KiB of task and
    // 0.4 KiB of span per idle connection, by heaptrack, before it had its own).
    let tasks = app.tasks.clone();
    tasks.spawn(serve_tunnel(app, io, tunnel));
}

/// Policy, then SNI ↔ IP agreement, then the SSRF guard over the original destination.
async fn approve(app: &App, facts: &Facts, orig: SocketAddr) -> Result<Target, DenyReason> {
    let policy = app.policy.load();
    policy::admit(&policy, facts)?;
    agree(app, facts.client, &facts.host, orig.ip()).await?;
    let addrs = policy::pick_address(
        &policy,
        &facts.host,
        orig.port(),
        &[orig.ip()],
        &is_local_addr,
    )?;
    Ok(Target {
        host: facts.host.clone(),
        port: orig.port(),
        addrs,
    })
}

/// The dialled address must be one the sandbox DNS gave this client for this name (the
/// primary evidence, immune to CDN and geo-DNS differences); failing that, one our own
/// lookup returns now.
async fn agree(app: &App, client: IpAddr, host: &Host, ip: IpAddr) -> Result<(), DenyReason> {
    if host.ip() == Some(ip) {
        return Ok(());
    }
    if app.answers.check(client, host.as_str(), ip, Instant::now()) == Evidence::Given {
        return Ok(());
    }
    match app.resolver.lookup(host).await {
        Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == ip) => Ok(()),
        _ => Err(DenyReason::AddressMismatch(host.clone(), ip)),
    }
}

/// Cleartext HTTP (port 80 and friends): the name comes from each request's `Host` and must
/// agree with the original destination. Never a credential.
async fn plain_http(
    app: Arc<App>,
    io: Replay<TcpStream>,
    client: IpAddr,
    orig: SocketAddr,
    conn: ConnHandle,
) {
    let framing = Arc::new(FramingCheck::default());
    let io = Watched::new(io, framing.clone());
    let idle = app.limits.client_idle;
    let handle = conn.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        let framing = framing.clone();
        let conn = conn.clone();
        async move {
            let busy = conn.busy();
            let resp = match framing.next_request() {
                Ok(()) => http_request(&app, client, orig, req).await,
                Err(e) => e.into_response(),
            };
            Ok::<_, Infallible>(conn.hold_until_sent(resp, busy))
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        // Checked on the parsed head, not only between reads (see connect.rs).
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conns::serve(served, &handle, idle).await {
        tracing::debug!(%client, "transparent HTTP connection ended: {e}");
    }
}

async fn http_request(
    app: &App,
    client: IpAddr,
    orig: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let result = async {
        let raw = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ProxyError::BadRequest("a Host header is required".into()))?;
        let (host, _) = parse_authority(raw, Some(orig.port()))
            .map_err(|e| ProxyError::BadRequest(format!("bad Host '{raw}': {e}")))?;
        // Answers the proxy gives itself (the emulated metadata server) come before the
        // SSRF guard would refuse 169.254.169.254; nothing is forwarded.
        let ctx = Ctx { upstream: &app.upstream, target: None };
        let routes = app.routes.load_full();
        let req = match routes.vendors.answer(ctx, Via::PlainHttp, &host, orig.port(), req).await {
            Ok(answered) => return answered,
            Err(req) => req,
        };
        // As squid writes it: the URL the client meant, without a default `:80`.
        let what = format!("http://{}{}", host.authority(orig.port(), 80), req.uri());
        let facts = Facts { client, host, port: orig.port(), entry: Entry::PlainHttp };
        let ctx = RequestCtx::new(Mode::Transparent, facts, &req);
        let target = approve(app, &ctx.facts, orig)
            .await
            .map_err(|reason| app.deny(&ctx.refusal(), reason))?;
        headers::check_authority(&req, &target.host, target.port())
            .and_then(|()| headers::check_framing(&req))
            .inspect_err(|e| crate::gate::refused(app, &ctx, e))?;
        let allowed = crate::gate::check(app, &ctx)?;
        tracing::info!(%client, url = %what, addr = %target, by = %allowed, "allow transparent HTTP (no credential)");
        let resp = crate::forward::forward(app, Scheme::Http, &target, None, ctx.count_upload(req))
            .await
            .unwrap_or_else(ProxyError::into_response);
        Ok(crate::gate::finish(app, ctx, &allowed, None, resp))
    }
    .await;
    result.unwrap_or_else(ProxyError::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the task of a redirected connection holds at most (a debug build; 1.3 KiB
    /// today), for a plain-HTTP connection's whole life and for a TLS one until its tunnel
    /// has a task of its own. A regression to a read chunk or a hyper connection inline
    /// would be several KiB (4.7 KiB with the ClientHello read's 4 KiB chunk array).
    const CONNECTION_FUTURE_MAX_BYTES: usize = 1536;

    /// The size of the future `f` returns, without calling it: nothing needs building.
    fn future_size<A, F: Future>(_f: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_redirected_connections_task_is_small_enough_to_idle_in() {
        type Args = (Arc<App>, TcpStream, SocketAddr, SocketAddr, ConnHandle);
        let size = future_size(|(app, stream, peer, local, conn): Args| {
            serve_redirected(app, stream, peer, local, conn)
        });
        eprintln!("serve_redirected future: {size} bytes");
        assert!(size <= CONNECTION_FUTURE_MAX_BYTES, "{size} bytes");
    }
}
