//! `portcullis serve`: the HTTP API and the Slack endpoint, beside the loops a replica runs
//! (sweeper, periodic reconcile, lease, stream reader, outbox delivery), until SIGTERM.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;
use crate::routes::router;
use crate::wiring::{self, WiringError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Wiring(#[from] WiringError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("the server failed: {0}")]
    Server(std::io::Error),
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
    eprintln!("portcullis listening on http://{local}");

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
    let announcer = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(outbox) = engine.outbox() {
                outbox.run(stop).await;
            }
        }
    });
    let mut stop_for_http = stop_rx.clone();
    let app = Arc::new(App::new(engine.clone(), &config, slack.clone()));
    let server = axum::serve(listener, router(app).into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(async move {
        let _ = stop_for_http.wait_for(|stop| *stop).await;
    });
    let signals = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let (served, ()) = tokio::join!(server.into_future(), signals);
    let _ = tokio::join!(sweeper, reconciler, streams, announcer);
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
    served.map_err(ServeError::Server)
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
