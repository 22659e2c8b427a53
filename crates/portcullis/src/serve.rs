//! `portcullis serve`: the HTTP API and the Slack endpoint, beside the loops a replica runs
//! (sweeper, periodic reconcile, lease, stream reader, outbox delivery), until SIGTERM.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::App;
use crate::config::{Config, HttpConfig};
use crate::routes::router;
use crate::wiring::{self, WiringError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Wiring(#[from] WiringError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot listen for /metrics on {address}: {source}")]
    MetricsListen { address: std::net::SocketAddr, source: std::io::Error },
}

/// The most a request's headers may take, on every listener (HTTP/1's read buffer, HTTP/2's
/// header list): larger ones are refused (431) before any handler runs.
const MAX_HEADERS: usize = 64 * 1024;

/// Answers HTTP on `listener` until `stop`, then lets open requests finish (at most 20 s).
/// Unlike `axum::serve`, a client must send each request's headers within
/// `header_read_timeout` (an HTTP/1 client slow with its headers, or an idle keep-alive
/// connection, is closed), and in at most [`MAX_HEADERS`] bytes. Both listeners, the public
/// one and `/metrics`', are served by this.
async fn serve_http(listener: tokio::net::TcpListener, app: axum::Router, http: HttpConfig, mut stop: watch::Receiver<bool>) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(http.header_read_timeout).max_buf_size(MAX_HEADERS);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADERS as u32);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            // (The guard `wait_for` returns is dropped inside, so this future is `Send`.)
            () = async { drop(stop.wait_for(|s| *s).await) } => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(20), graceful.shutdown()).await.is_err() {
        tracing::warn!("open connections did not finish within 20 s of shutdown");
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops taking requests, lets the loops finish the work
/// in hand, and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let (engine, tail) = wiring::replica(&config).await?;
    let engine = Arc::new(engine);
    let slack = wiring::slack_endpoint(&config).await?.map(Arc::new);
    let listen = |source| ServeError::Listen { address: config.listen, source };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    tracing::info!(address = %local, "serving");
    // The metrics listener is bound before anything is announced, so a bad address stops the
    // server at start.
    let metrics_listener = match config.metrics_listen {
        Some(address) => {
            let failed = |source| ServeError::MetricsListen { address, source };
            let listener = tokio::net::TcpListener::bind(address).await.map_err(failed)?;
            let local = listener.local_addr().map_err(failed)?;
            tracing::info!(address = %local, "serving metrics");
            eprintln!("portcullis metrics on http://{local}/metrics");
            Some(listener)
        }
        None => None,
    };
    eprintln!("portcullis listening on http://{local}");
    if engine.guarding().is_some() {
        // Guard learns who it is now, so the start log says it (its own calls are also known
        // from its ledger, whatever identity their events name).
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Some(guard) = engine.guarding() {
                guard.own_identities().await;
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move { engine.run_sweeper(stop).await }
    });
    let reconciler = tokio::spawn({
        let (engine, stop, every) = (engine.clone(), stop_rx.clone(), config.reconcile_interval);
        async move { engine.run_reconciler(every, stop).await }
    });
    let lease = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(lease) = engine.lease() {
                lease.run(stop).await;
            }
        }
    });
    let streams = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(tail) = tail {
                crate::replica::follow_streams(engine, tail, stop, watch::Sender::new(0)).await;
            }
        }
    });
    let member_sync = tokio::spawn({
        let (engine, stop, every) = (engine.clone(), stop_rx.clone(), config.member_sync_interval);
        async move { engine.run_member_sync(every, stop).await }
    });
    let announcer = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(outbox) = engine.outbox() {
                outbox.run(stop).await;
            }
        }
    });
    let app = Arc::new(App::new(engine.clone(), &config, slack.clone()));
    let metrics = match metrics_listener {
        Some(listener) => {
            let metrics = Arc::new(crate::metrics::Metrics::new(engine.clone(), app.http_requests.clone()));
            let router = crate::metrics::router(metrics);
            Some(tokio::spawn(serve_http(listener, router, config.http.clone(), stop_rx.clone())))
        }
        None => None,
    };
    let server = serve_http(listener, router(app), config.http.clone(), stop_rx.clone());
    let signals = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let ((), ()) = tokio::join!(server, signals);
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = tokio::join!(sweeper, reconciler, member_sync, streams, announcer);
    // Released last, so no other replica starts sweeping while this one still is.
    let _ = lease.await;
    // Acknowledged Slack commands finish and answer; then what they announced goes out.
    if let Some(slack) = &slack {
        slack.drain(std::time::Duration::from_secs(20)).await;
    }
    if let Some(outbox) = engine.outbox() {
        let report = outbox.flush(time::Duration::seconds(5)).await;
        if report.pending > 0 {
            tracing::warn!(pending = report.pending, "announcements left in the outbox for the next run");
        }
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
