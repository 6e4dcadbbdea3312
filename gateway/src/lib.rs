//! The pg_s2t gateway: a thin axum service over the extension.
//!
//! Layout:
//! - [`config`]: flags and environment; [`app`] builds the router from an
//!   [`AppState`]; [`run`] serves it until shutdown.
//! - [`routes`]: handlers, thin: they call the extension's functions inside
//!   a transaction that names the user ([`db::begin_as`]), so row-level
//!   security, not handler code, decides what a user sees.
//! - Pure logic with unit tests: [`tokens`] (passwords, JWTs, refresh
//!   tokens), [`throttle`], [`limits`] (hashing and upload slots),
//!   [`pgtls`] (`sslmode` for PostgreSQL), [`cursor`], [`range`],
//!   [`transcript`], [`realtime_compat`] (OpenAI's realtime
//!   transcription events).
//! - [`llm`]: the client of an OpenAI-compatible chat model (generative
//!   answers), bounded by deadlines.
//! - [`error`]: problem details and the SQLSTATE → HTTP mapping;
//!   [`events`]: LISTEN/NOTIFY fan-out for Server-Sent Events;
//!   [`openapi`]: the API description at `/openapi.json` and `/docs`.

pub mod config;
pub mod cursor;
pub mod db;
pub mod error;
pub mod events;
pub mod limits;
pub mod llm;
pub mod observe;
pub mod openapi;
pub use s2t_pg as pgtls;
pub mod probe;
pub mod quota;
pub mod range;
pub mod realtime_compat;
pub mod routes;
pub mod throttle;
pub mod tokens;
pub mod transcript;

use axum::Router;
use std::sync::Arc;

pub use config::Config;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub pool: deadpool_postgres::Pool,
    pub jwt: tokens::JwtKeys,
    /// Failed logins per login name.
    pub throttle: throttle::LoginThrottle,
    /// Failed logins per client address (IPv6 per /64).
    pub address_throttle: throttle::LoginThrottle,
    /// Registrations per client address.
    pub register_throttle: throttle::LoginThrottle,
    /// Password hashing and verifying, bounded.
    pub hashing: limits::Hashing,
    /// Uploads in flight per user.
    pub uploads: limits::UploadSlots,
    pub cors: config::CorsOrigins,
    pub events: events::Hub,
    pub metrics: observe::Metrics,
    /// The chat model for generative answers, when one is configured.
    pub llm: Option<llm::Llm>,
    /// Flips to true when the server starts shutting down, so long-lived
    /// answers (event streams, synchronous waits) end instead of holding
    /// the shutdown up.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the pool (connections open lazily) and starts the event
    /// listener; refuses a configuration that cannot be right.
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        use anyhow::Context;
        let secret = config::jwt_secret(config.jwt_secret.as_deref(), config.dev)?;
        let cors = config::cors_origins(&config.cors_origins)?;
        let target = pgtls::target(&config.database_url).context("APP_DATABASE_URL")?;
        let pool = db::pool(
            &target,
            config.db_pool,
            std::time::Duration::from_millis(config.db_wait_ms),
        )?;
        let events = events::Hub::start(target);
        let llm = llm::Llm::from_config(&config)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                jwt: tokens::JwtKeys::new(&secret),
                throttle: throttle::LoginThrottle::new(throttle::Policy::default()),
                address_throttle: throttle::LoginThrottle::new(throttle::Policy::per_address()),
                register_throttle: throttle::LoginThrottle::new(throttle::Policy::registrations()),
                hashing: limits::Hashing::new(
                    config.hash_concurrency,
                    std::time::Duration::from_millis(config.hash_wait_ms),
                ),
                uploads: limits::UploadSlots::new(config.max_uploads_in_flight),
                cors,
                config,
                pool,
                events,
                metrics: observe::Metrics::default(),
                llm,
                stopping: tokio::sync::watch::channel(false).0,
            }),
        })
    }
}

impl AppState {
    /// [`AppState::new`], then the checks that need the database: the
    /// gateway refuses to start when its role bypasses row-level security.
    pub async fn connect(config: Config) -> anyhow::Result<AppState> {
        let state = AppState::new(config)?;
        let client = state
            .pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
        if let Some(problem) = db::unsafe_role(&client).await? {
            anyhow::bail!("refusing to start: {problem}");
        }
        Ok(state)
    }
}

pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Serve until `shutdown` resolves, then finish the requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = state.stopping.clone();
    let app = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.send_replace(true);
        })
        .await
}

/// HTTP status for an extension SQLSTATE; one mapping for the whole service.
pub fn status_for_sqlstate(sqlstate: &str) -> u16 {
    s2t_core::sqlstate::http_status(sqlstate).unwrap_or(500)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_codes_are_server_errors() {
        assert_eq!(super::status_for_sqlstate("XX000"), 500);
        assert_eq!(super::status_for_sqlstate("S2Q01"), 429);
    }
}
