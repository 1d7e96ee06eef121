use std::process::ExitCode;

use clap::Parser;
use paude_proxy::config::{Args, Config};
use tracing_subscriber::EnvFilter;

/// jemalloc with its background purging thread: freed pages go back to the kernel within
/// seconds even while the proxy is idle. glibc's malloc kept the memory of a connection
/// flood for good (issue 10: 17 MB → 505 MB, never returned); mimalloc only purges a
/// thread's pages when that thread allocates again, so an idle proxy kept its peak too.
/// Freed pages are returned after one second unused (`.cargo/config.toml`), not ten.
#[global_allocator]
#[cfg(not(feature = "system-alloc"))]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// sysexits.h EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    // Subcommands need no configuration: a broken proxy setup must not stop them.
    if let Some(command) = &args.command {
        return paude_proxy::cli::run(command, &args);
    }
    let env = |k: &str| std::env::var(k).ok();
    let config = match Config::from_args(args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paude-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Flushes pending log lines when main returns.
    let _log_guard = init_tracing(config.verbose);
    if config.check_config {
        return match paude_proxy::listen::check(&config) {
            Ok(summary) => {
                println!("{summary}");
                for line in paude_proxy::presets::describe(&config.presets) {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("paude-proxy: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let prepared = match paude_proxy::listen::prepare(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paude-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paude-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reloads (issue 12). Installed before anything is served, so a HUP never takes
    // the default action (ending the process).
    {
        let _entered = runtime.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                runtime.spawn(paude_proxy::reload::on_sighup(prepared.app.clone(), hup));
            }
            Err(e) => {
                eprintln!("paude-proxy: cannot install the SIGHUP handler: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Installed here, before serving, not when `run` first polls them: a SIGHUP or SIGTERM
    // arriving before its handler exists gets the default action (the process dies), and
    // a handler made only after the first SIGTERM would never see that one (so the
    // "second" signal would have to be a third).
    let stops = {
        let _in_runtime = runtime.enter();
        stop_signals()
    };
    let served = runtime.block_on(paude_proxy::run(
        prepared,
        nth_stop(stops.clone(), 1),
        nth_stop(stops, 2),
    ));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paude-proxy: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Log lines go to stderr through a background writer thread, in batches, so request
/// handling never waits on the terminal or a pipe and never wakes a thread per line
/// (`log_writer` says what that cost).
fn init_tracing(verbose: bool) -> Option<paude_proxy::log_writer::FlushGuard> {
    let default = if verbose {
        "paude_proxy=debug,info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match paude_proxy::log_writer::spawn(std::io::stderr()) {
        Ok((writer, guard)) => {
            builder.with_writer(writer).init();
            Some(guard)
        }
        Err(e) => {
            // No thread to spare: log inline rather than not at all.
            builder.with_writer(std::io::stderr).init();
            tracing::warn!("cannot start the log writer thread, logging inline: {e}");
            None
        }
    }
}

/// Counts SIGTERM and SIGINT from now on (inside the runtime); `None` if they cannot be
/// handled (then they keep their default action).
fn stop_signals() -> Option<tokio::sync::watch::Receiver<usize>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot handle SIGTERM/SIGINT: they will end the process without a drain");
        return None;
    };
    let (count, stops) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            count.send_modify(|n| *n += 1);
        }
    });
    Some(stops)
}

/// Resolves at the `n`th SIGTERM or SIGINT: the first starts the drain, the second cuts it.
async fn nth_stop(stops: Option<tokio::sync::watch::Receiver<usize>>, n: usize) {
    if let Some(mut stops) = stops
        && stops.wait_for(|seen| *seen >= n).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
