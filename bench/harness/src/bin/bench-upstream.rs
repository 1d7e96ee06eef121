//! The upstream every peer talks to: TLS (h2 and HTTP/1.1) on loopback or in the lab,
//! answering fixed routes as cheaply as it can so that it is never the bottleneck.
//!
//! `bench-upstream pki --out DIR --names a,b` writes the run's PKI (see `pki::generate`).
//! `bench-upstream serve --listen ADDR[,ADDR] --cert F --key F --auth VALUE` serves:
//!   GET  /1k        1 KiB body
//!   GET  /close     1 KiB body and `Connection: close` (forces a fresh upstream connection)
//!   GET  /bytes/N   N bytes, streamed
//!   POST /upload    consumes the body, answers with its length
//!   GET  /sse?n=N&ms=M  N server-sent events M ms apart, each carrying its send time
//!   GET  /auth      `injected` or 401: the injection check, without echoing the value
//! Every route answers 401 unless exactly one Authorization header equal to
//! `--auth` arrived, so a peer that failed to inject shows up as errors, not as speed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use paude_bench::args::Args;
use paude_bench::body::BenchBody;
use paude_bench::{BULK_CHUNK, SMALL_BODY, crypto_provider, pki, unix_nanos};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// The upstream exits by itself after this long even if nobody stops it.
const DEFAULT_MAX_SECS: u64 = 3600;
/// A client that has not finished its TLS handshake by then is dropped.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on /sse so a typo cannot make a stream that outlives the run.
const SSE_MAX_EVENTS: u64 = 10_000;
const SSE_MAX_INTERVAL_MS: u64 = 10_000;

struct State {
    auth: Option<String>,
    small: Bytes,
    chunk: Bytes,
}

fn main() {
    let result =
        Args::from_env().and_then(|args| match args.positional.first().map(String::as_str) {
            Some("pki") => {
                let names: Vec<String> = args.str("names")?.split(',').map(str::to_owned).collect();
                pki::generate(std::path::Path::new(args.str("out")?), &names)
            }
            Some("serve") => serve(&args),
            _ => Err("usage: bench-upstream pki|serve [--flags]".into()),
        });
    if let Err(e) = result {
        eprintln!("bench-upstream: {e}");
        std::process::exit(2);
    }
}

fn server_config(args: &Args) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(args.str("cert")?)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(args.str("key")?).map_err(|e| e.to_string())?;
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    // `--alpn h1` makes an HTTP/1.1-only upstream (for profiling a proxy's h1 pool).
    cfg.alpn_protocols = match args.opt("alpn").unwrap_or("h2,h1") {
        "h1" => vec![b"http/1.1".to_vec()],
        "h2,h1" => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        other => return Err(format!("--alpn {other}: expected h1 or h2,h1")),
    };
    Ok(Arc::new(cfg))
}

fn serve(args: &Args) -> Result<(), String> {
    let tls = TlsAcceptor::from(server_config(args)?);
    let addrs: Vec<SocketAddr> = args
        .str("listen")?
        .split(',')
        .map(|a| a.parse().map_err(|_| format!("bad --listen address {a}")))
        .collect::<Result<_, _>>()?;
    let max = Duration::from_secs(args.num("max-secs", DEFAULT_MAX_SECS)?);
    let state = Arc::new(State {
        auth: args.opt("auth").map(str::to_owned),
        small: Bytes::from(vec![b'x'; SMALL_BODY]),
        chunk: Bytes::from(vec![b'y'; BULK_CHUNK]),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("bind {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            println!("listening {local}");
            tokio::spawn(accept_loop(listener, tls.clone(), state.clone()));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(max) => eprintln!("bench-upstream: --max-secs reached, exiting"),
        }
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, tls: TlsAcceptor, state: Arc<State>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors during the idle-connection row: wait, do not spin.
                eprintln!("bench-upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(TLS_ACCEPT_TIMEOUT, tls.accept(tcp)).await
            else {
                return;
            };
            let service = service_fn(move |req| route(req, state.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(status: StatusCode, body: BenchBody) -> Response<BenchBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, s: String) -> Response<BenchBody> {
    respond(status, BenchBody::Full(Some(Bytes::from(s))))
}

fn query_num(query: &str, key: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

async fn route(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<BenchBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let auths: Vec<_> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .collect();
    let injected = match &state.auth {
        Some(expected) => auths.len() == 1 && auths[0].as_bytes() == expected.as_bytes(),
        None => true,
    };
    if path == "/auth" {
        // Says whether injection worked without echoing the value: a proxy that scrubs
        // echoed credentials from responses would otherwise garble the answer.
        return Ok(if injected {
            text(StatusCode::OK, "injected\n".into())
        } else {
            text(
                StatusCode::UNAUTHORIZED,
                format!("not injected: {} Authorization header(s)\n", auths.len()),
            )
        });
    }
    if !injected {
        return Ok(text(
            StatusCode::UNAUTHORIZED,
            "credential not injected\n".into(),
        ));
    }
    let resp = match path.as_str() {
        "/1k" => respond(StatusCode::OK, BenchBody::Full(Some(state.small.clone()))),
        "/close" => {
            let mut r = respond(StatusCode::OK, BenchBody::Full(Some(state.small.clone())));
            r.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            r
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
                }
            }
            text(StatusCode::OK, total.to_string())
        }
        "/sse" => {
            let query = req.uri().query().unwrap_or("");
            let n = query_num(query, "n", 10).min(SSE_MAX_EVENTS);
            let ms = query_num(query, "ms", 50).min(SSE_MAX_INTERVAL_MS);
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms.max(1)));
                tick.tick().await;
                for _ in 0..n {
                    tick.tick().await;
                    let event = format!("data: {}\n\n", unix_nanos());
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = respond(StatusCode::OK, BenchBody::Channel(rx));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            r
        }
        p => match p
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => respond(
                StatusCode::OK,
                BenchBody::Repeat {
                    left: n,
                    chunk: state.chunk.clone(),
                },
            ),
            None => text(StatusCode::NOT_FOUND, "no such route\n".into()),
        },
    };
    Ok(resp)
}
