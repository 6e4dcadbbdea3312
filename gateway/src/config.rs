//! Settings, from flags or the environment.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(name = "s2t-gateway", version, about = "pg_s2t HTTP gateway")]
pub struct Config {
    /// PostgreSQL connection string of a member of s2t_app (row-level
    /// security applies to everything the gateway reads).
    #[arg(long, env = "APP_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "S2T_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HS256 secret for access tokens: at least 32 bytes, not all alike.
    #[arg(long, env = "S2T_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Development mode: accept a missing or weak secret (a random one is
    /// used when missing, so tokens die with the process). Never in
    /// production.
    #[arg(long, env = "S2T_DEV", default_value_t = false)]
    pub dev: bool,
    #[arg(long, env = "S2T_ACCESS_TTL_SECS", default_value_t = 900)]
    pub access_ttl_secs: i64,
    #[arg(long, env = "S2T_REFRESH_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_ttl_secs: i64,
    /// How long after a refresh the same spent token still returns the
    /// successor already issued (two tabs, a retry after a timeout) instead
    /// of revoking the session as stolen; at most 300.
    #[arg(long, env = "S2T_REFRESH_GRACE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u16).range(0..=300))]
    pub refresh_grace_secs: u16,
    /// Largest accepted upload, in bytes.
    #[arg(long, env = "S2T_MAX_UPLOAD_BYTES", default_value_t = 200 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Browser origins allowed to call the API (comma-separated); empty
    /// means same-origin only.
    #[arg(long, env = "S2T_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Where uploads are spooled before they go into the database.
    #[arg(long, env = "S2T_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Models the workers have installed, as clients name them (an `.en`
    /// name is the English model). `whisper-1` means the default choice.
    #[arg(
        long,
        env = "S2T_MODEL_NAMES",
        value_delimiter = ',',
        default_value = "tiny.en,base"
    )]
    pub model_names: Vec<String>,
    /// Largest file `POST /v1/audio/transcriptions` accepts (it answers
    /// synchronously).
    #[arg(long, env = "S2T_SYNC_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub sync_max_bytes: u64,
    /// How long a synchronous transcription may wait for the worker.
    #[arg(long, env = "S2T_SYNC_TIMEOUT_SECS", default_value_t = 600)]
    pub sync_timeout_secs: u64,
    /// Reverse proxies (comma-separated addresses) whose `X-Forwarded-For`
    /// is believed when deciding where a request comes from (for login
    /// throttling). Empty: the TCP peer is the client.
    #[arg(long, env = "S2T_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Database connections in the pool.
    #[arg(long, env = "S2T_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    /// How long a request waits for a pooled connection before it gets 503:
    /// a stuck pool then degrades into quick refusals, not a hung API.
    #[arg(long, env = "S2T_DB_WAIT_MS", default_value_t = 5000)]
    pub db_wait_ms: u64,
    /// Password hashes computed at once (argon2id, 19 MiB each); 0 means
    /// one per core.
    #[arg(long, env = "S2T_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,
    /// How long a login or registration waits for a hashing slot before it
    /// gets 503 with Retry-After.
    #[arg(long, env = "S2T_HASH_WAIT_MS", default_value_t = 3000)]
    pub hash_wait_ms: u64,
    /// Uploads one user may have in flight at once (`POST /recordings` and
    /// `/v1/audio/transcriptions` together).
    #[arg(long, env = "S2T_MAX_UPLOADS_IN_FLIGHT", default_value_t = 4)]
    pub max_uploads_in_flight: usize,
    /// The base URL of an OpenAI-compatible chat-completions API (for
    /// example `http://127.0.0.1:8091/v1`, `s2t-llm`) for generative
    /// answers. Unset: every answer is extractive.
    #[arg(long, env = "S2T_LLM_URL")]
    pub llm_url: Option<String>,
    /// The chat model's name, as that API knows it.
    #[arg(long, env = "S2T_LLM_MODEL")]
    pub llm_model: Option<String>,
    #[arg(long, env = "S2T_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// How long a generated answer may take in all; past it (or a 15 s
    /// silence) the extractive answer is given instead.
    #[arg(long, env = "S2T_LLM_TIMEOUT_SECS", default_value_t = 30)]
    pub llm_timeout_secs: u64,
    /// Longest generated answer, in tokens.
    #[arg(long, env = "S2T_LLM_MAX_TOKENS", default_value_t = 200)]
    pub llm_max_tokens: u32,
}

impl Config {
    /// The settings a test or an embedding program starts from: everything
    /// at its default except what has no default.
    pub fn new(database_url: impl Into<String>) -> Config {
        let url = database_url.into();
        Config::parse_from(["s2t-gateway", "--database-url", url.as_str()])
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("S2T_JWT_SECRET is not set; set a random secret of at least 32 bytes (or --dev for development)")]
    MissingSecret,
    #[error(
        "S2T_JWT_SECRET is too weak ({0}); use at least 32 random bytes (or --dev for development)"
    )]
    WeakSecret(&'static str),
    #[error("S2T_CORS_ORIGINS: {0}")]
    Cors(String),
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq)]
pub enum CorsOrigins {
    /// No cross-origin access (the web client is served by the gateway).
    SameOrigin,
    /// `*`: any origin, without credentials. The API authenticates with a
    /// bearer header, never a cookie, so this exposes nothing a page could
    /// not already send with its own token.
    Any,
    List(Vec<axum::http::HeaderValue>),
}

/// Read `S2T_CORS_ORIGINS`: `*` alone, or a list of `scheme://host[:port]`
/// origins. Anything else is refused at startup rather than silently
/// dropped (a typo would otherwise show up only as browsers' CORS errors).
pub fn cors_origins(configured: &[String]) -> Result<CorsOrigins, ConfigError> {
    let origins: Vec<&str> = configured
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.contains(&"*") {
        if origins.len() > 1 {
            return Err(ConfigError::Cors(
                "'*' allows every origin; list origins or give '*' alone".into(),
            ));
        }
        return Ok(CorsOrigins::Any);
    }
    if origins.is_empty() {
        return Ok(CorsOrigins::SameOrigin);
    }
    let mut list = Vec::new();
    for o in origins {
        let shaped = (o.starts_with("http://") || o.starts_with("https://"))
            && !o.trim_end_matches('/').contains(['*', ' ', '?', '#'])
            && o.split("://")
                .nth(1)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        let value = axum::http::HeaderValue::from_str(o).ok().filter(|_| shaped);
        match value {
            Some(v) => list.push(v),
            None => {
                return Err(ConfigError::Cors(format!(
                    "{o:?} is not an origin like https://app.example.com (scheme, host, optional port, no path)"
                )))
            }
        }
    }
    Ok(CorsOrigins::List(list))
}

/// The secret to sign with: refuses weak ones unless in development mode.
pub fn jwt_secret(configured: Option<&str>, dev: bool) -> Result<Vec<u8>, ConfigError> {
    let Some(secret) = configured.filter(|s| !s.is_empty()) else {
        if dev {
            return Ok(crate::tokens::new_refresh_token().into_bytes());
        }
        return Err(ConfigError::MissingSecret);
    };
    let distinct = secret
        .bytes()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let weakness = if secret.len() < 32 {
        Some("shorter than 32 bytes")
    } else if distinct < 8 {
        Some("fewer than 8 distinct characters")
    } else {
        None
    };
    match weakness {
        Some(why) if !dev => Err(ConfigError::WeakSecret(why)),
        _ => Ok(secret.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_needs_a_strong_secret() {
        assert_eq!(jwt_secret(None, false), Err(ConfigError::MissingSecret));
        assert_eq!(jwt_secret(Some(""), false), Err(ConfigError::MissingSecret));
        assert!(matches!(
            jwt_secret(Some("short"), false),
            Err(ConfigError::WeakSecret(_))
        ));
        assert!(matches!(
            jwt_secret(Some(&"a".repeat(64)), false),
            Err(ConfigError::WeakSecret(_))
        ));
        let strong = "k3J9x-Qp2Zr8Wm4Tn6Yb1Hc5Vd7Fg0Ls_";
        assert_eq!(jwt_secret(Some(strong), false).unwrap(), strong.as_bytes());
    }

    #[test]
    fn cors_origins_are_star_alone_or_real_origins() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cors_origins(&list(&["*"])), Ok(CorsOrigins::Any));
        assert_eq!(cors_origins(&list(&[" * "])), Ok(CorsOrigins::Any));
        assert_eq!(cors_origins(&[]), Ok(CorsOrigins::SameOrigin));
        assert_eq!(cors_origins(&list(&[""])), Ok(CorsOrigins::SameOrigin));
        assert_eq!(
            cors_origins(&list(&["https://a.example", "http://localhost:3000"])),
            Ok(CorsOrigins::List(vec![
                axum::http::HeaderValue::from_static("https://a.example"),
                axum::http::HeaderValue::from_static("http://localhost:3000"),
            ]))
        );
        for bad in [
            &["*", "https://a.example"][..],
            &["a.example"],
            &["https://a.example/path"],
            &["https://*.example"],
            &["https://"],
        ] {
            let err = cors_origins(&list(bad)).unwrap_err();
            assert!(matches!(err, ConfigError::Cors(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn new_has_the_documented_defaults() {
        let c = Config::new("postgres://x@localhost/db");
        assert_eq!(c.max_uploads_in_flight, 4);
        assert_eq!(c.db_wait_ms, 5000);
        assert_eq!(c.hash_concurrency, 0);
        assert!(c.cors_origins.is_empty());
    }

    #[test]
    fn dev_mode_accepts_weak_or_missing_secrets() {
        assert_eq!(jwt_secret(Some("short"), true).unwrap(), b"short");
        assert_eq!(jwt_secret(None, true).unwrap().len(), 43);
    }
}
