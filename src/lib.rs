//! Sparks: a Matrix homeserver (and, with the `sfu` crate, a video meeting server) in one binary.
//!
//! Layers, top to bottom (a layer only uses the ones below it):
//! - [`api`]: axum handlers per spec area; parse, authorise, call services.
//! - services: [`rooms`], [`sync`], [`users`], [`ratelimit`].
//! - [`storage`]: typed maps over RocksDB column families.

pub mod api;
pub mod cidr;
pub mod config;
pub mod directory;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod media;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod rtc;
pub mod search;
pub mod server;
pub mod storage;
pub mod sync;
pub mod users;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

pub use crate::{config::Config, server::Server};

/// Opens storage, binds the listener and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), String> {
    let started = std::time::Instant::now();
    let server = Server::open(config)?;
    let listener = TcpListener::bind(server.config.listen.client)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", server.config.listen.client))?;
    spawn_background(&server);
    rtc::start(&server).await;
    let federation = start_federation_listener(&server).await?;
    let app = api::router::build(server.clone());
    tracing::info!(
        server_name = %server.server_name(),
        client = %server.config.listen.client,
        database = %server.config.database_path.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "Sparks is ready"
    );
    let shutdown_server = server.clone();
    // Without TCP_NODELAY a small response (a woken /sync) can wait ~40 ms on Nagle's
    // algorithm meeting the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_server.begin_shutdown();
    });
    // Long-polls end at once on shutdown; anything else gets a few seconds to finish.
    let mut shutdown = server.shutdown.subscribe();
    tokio::select! {
        result = serve => result.map_err(|e| format!("server error: {e}"))?,
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => tracing::warn!("connections still open after 5 s; closing them"),
    }
    if let Some(handle) = federation {
        handle.graceful_shutdown(Some(Duration::from_secs(5)));
    }
    server.db.flush();
    tracing::info!("stopped");
    Ok(())
}

/// Binds the federation listener (TLS) when `[listen] federation` is set; serves it in the
/// background. Returns its handle for shutdown.
async fn start_federation_listener(
    server: &Arc<Server>,
) -> Result<Option<axum_server::Handle<SocketAddr>>, String> {
    let Some(addr) = server.config.listen.federation else {
        return Ok(None);
    };
    let tls = federation::tls::server_config(server).map_err(|e| e.to_string())?;
    // Bound here, not inside the task, so a port in use stops the start with a clear error.
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} (federation): {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("federation listener: {e}"))?;
    let handle = axum_server::Handle::new();
    let app = api::federation::router(server.clone());
    let serve = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .map_err(|e| format!("federation listener: {e}"))?
    .handle(handle.clone())
    .serve(app.into_make_service_with_connect_info::<SocketAddr>());
    tokio::spawn(async move {
        if let Err(error) = serve.await {
            tracing::error!(%error, "federation listener stopped");
        }
    });
    tracing::info!(federation = %addr, "federation listener (TLS) ready");
    Ok(Some(handle))
}

fn spawn_background(server: &Arc<Server>) {
    search::Search::start(server);
    tokio::spawn(push::Push::run_delivery(server.clone()));
    tokio::spawn(rooms::delayed::DelayedEvents::run(server.clone()));
    if federation::enabled(server) {
        tokio::spawn(federation::sender::Sender::run(server.clone()));
    }
    let typing_server = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            typing_server.typing.expire(&typing_server);
            crate::users::presence::reap(&typing_server);
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
