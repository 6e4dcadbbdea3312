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
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("S2T_JWT_SECRET is not set; set a random secret of at least 32 bytes (or --dev for development)")]
    MissingSecret,
    #[error(
        "S2T_JWT_SECRET is too weak ({0}); use at least 32 random bytes (or --dev for development)"
    )]
    WeakSecret(&'static str),
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
    fn dev_mode_accepts_weak_or_missing_secrets() {
        assert_eq!(jwt_secret(Some("short"), true).unwrap(), b"short");
        assert_eq!(jwt_secret(None, true).unwrap().len(), 43);
    }
}
