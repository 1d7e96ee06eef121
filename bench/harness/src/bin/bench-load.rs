//! The benchmark's client: `bench-load MODE --flags`, one JSON `RESULT {...}` line on
//! stdout at the end (plus `MEASURE_START`/`MEASURE_END`/`READY` markers on the way).
//! Modes: rate, newconn, latency, sse, bulk, idle, check. See the `load` modules.

use paude_bench::args::Args;
use paude_bench::load::dial::{Alpn, Dialer};
use paude_bench::load::h1::{H1, get_head};
use paude_bench::load::{bulk, idle, latency, newconn, rate, sse, timed};

/// Worker threads of the client's runtime: one per core, like every peer gets.
const CLIENT_THREADS: usize = 2;

fn main() {
    let outcome = Args::from_env().and_then(|args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.num("threads", CLIENT_THREADS)?)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            match args.positional.first().map(String::as_str) {
                Some("rate") => rate::run(&args).await,
                Some("newconn") => newconn::run(&args).await,
                Some("latency") => latency::run(&args).await,
                Some("sse") => sse::run(&args).await,
                Some("bulk") => bulk::run(&args).await,
                Some("idle") => idle::run(&args).await,
                Some("check") => check(&args).await,
                _ => {
                    Err("usage: bench-load rate|newconn|latency|sse|bulk|idle|check --flags".into())
                }
            }
        })
    });
    match outcome {
        Ok(v) => println!("RESULT {v}"),
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(1);
        }
    }
}

/// One request to `/auth`: the upstream says whether exactly the real credential arrived.
async fn check(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let mut conn = H1::new(dialer.open(Alpn::H1).await.map_err(|e| e.to_string())?);
    let mut body = Vec::new();
    let r = timed("check", async {
        conn.send(&get_head(&dialer.authority, "/auth", &dialer.auth, true))
            .await?;
        conn.read_response(|b| body.extend_from_slice(b)).await
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "status": r.status,
        "answer": String::from_utf8_lossy(&body).trim(),
    }))
}
