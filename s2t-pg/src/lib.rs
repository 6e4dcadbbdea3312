//! PostgreSQL over TLS, with libpq's `sslmode` meanings, for every
//! connection the gateway and the worker open (pools, LISTEN, job slots,
//! heartbeats, maintenance). A crate of its own so that `s2t-core`, which
//! the extension links, stays free of tokio-postgres and OpenSSL.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and nothing of
//! certificates, so this module takes `sslmode` and `sslrootcert` out of the
//! connection string itself and builds the matching connector (OpenSSL via
//! `native-tls`, so the system's trust store applies):
//!
//! | `sslmode` | connection |
//! |---|---|
//! | `disable`, `prefer` (default) | plain, as before: the gateway does not try TLS |
//! | `require` | encrypted, the certificate not checked (as libpq); with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | encrypted, the chain checked against `sslrootcert` or the system roots |
//! | `verify-full` | `verify-ca` and the host name (or IP address) must match the certificate |

use std::path::PathBuf;
use tokio_postgres::config::SslMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub root_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslrootcert {path}: {error}")]
    RootCert { path: String, error: String },
    #[error("the connection string: {0}")]
    Parse(#[from] tokio_postgres::Error),
    #[error("TLS: {0}")]
    Tls(#[from] native_tls::Error),
}

fn mode(value: &str) -> Result<TlsMode, TlsConfigError> {
    Ok(match value {
        "disable" => TlsMode::Disable,
        // allow is libpq's "plain unless the server insists": plain here.
        "allow" | "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        other => return Err(TlsConfigError::Mode(other.to_string())),
    })
}

/// Split the TLS settings out of a connection string (URL or `key=value`
/// form); the rest is for tokio-postgres.
pub fn split(conn: &str) -> Result<(String, TlsSettings), TlsConfigError> {
    let mut settings = TlsSettings {
        mode: TlsMode::Prefer,
        root_cert: None,
    };
    let mut take = |key: &str, value: &str| -> Result<bool, TlsConfigError> {
        match key {
            "sslmode" => settings.mode = mode(value)?,
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        match conn.split_once('?') {
            None => conn.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // key=value pairs; values with spaces would be quoted, which TLS
        // settings (a mode, a path) rarely need, so plain tokens suffice.
        let mut kept = Vec::new();
        for token in conn.split_whitespace() {
            let taken = match token.split_once('=') {
                Some((k, v)) => take(k.trim(), v.trim_matches('\''))?,
                None => false,
            };
            if !taken {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    if settings.mode == TlsMode::Require && settings.root_cert.is_some() {
        // libpq: a root certificate with sslmode=require means verify-ca.
        settings.mode = TlsMode::VerifyCa;
    }
    Ok((rest, settings))
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).expect("hex") * 16 + hex(l).expect("hex")) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where and how to connect: the parsed configuration and, when TLS is
/// wanted, its connector.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<postgres_native_tls::MakeTlsConnector>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The connector for `settings`, or `None` for a plain connection.
pub fn connector(
    settings: &TlsSettings,
) -> Result<Option<native_tls::TlsConnector>, TlsConfigError> {
    let mut builder = native_tls::TlsConnector::builder();
    match settings.mode {
        TlsMode::Disable | TlsMode::Prefer => return Ok(None),
        TlsMode::Require => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        TlsMode::VerifyCa => {
            builder.danger_accept_invalid_hostnames(true);
        }
        TlsMode::VerifyFull => {}
    }
    if let Some(path) = &settings.root_cert {
        let err = |error: String| TlsConfigError::RootCert {
            path: path.display().to_string(),
            error,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let certs =
            native_tls::Certificate::stack_from_pem(&pem).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in the file".into()));
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
        // Trust only the given roots, as libpq does with sslrootcert.
        builder.disable_built_in_roots(true);
    }
    Ok(Some(builder.build()?))
}

/// Parse a connection string into a [`Target`].
pub fn target(conn: &str) -> Result<Target, TlsConfigError> {
    let (rest, settings) = split(conn)?;
    let mut config: tokio_postgres::Config = rest.parse()?;
    let tls = connector(&settings)?;
    config.ssl_mode(match settings.mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    Ok(Target {
        config,
        tls: tls.map(postgres_native_tls::MakeTlsConnector::new),
    })
}

/// Connect and drive the connection on the runtime.
pub async fn connect(target: &Target) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_notifying(target, |_| {}).await
}

/// Connect and drive the connection, handing each notification to
/// `on_notification` (the LISTEN connection wakes the job slots with it).
pub async fn connect_notifying(
    target: &Target,
    on_notification: impl Fn(tokio_postgres::Notification) + Send + 'static,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match &target.tls {
        Some(tls) => {
            let (client, connection) = target.config.connect(tls.clone()).await?;
            tokio::spawn(pump(connection, on_notification));
            Ok(client)
        }
        None => {
            let (client, connection) = target.config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(pump(connection, on_notification));
            Ok(client)
        }
    }
}

async fn pump<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    on_notification: impl Fn(tokio_postgres::Notification),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(Ok(message)) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(n) = message {
            on_notification(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_settings_are_taken_out_and_the_rest_kept() {
        let (rest, s) = split(
            "postgres://gw@db.example:5432/s2t?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=gw",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://gw@db.example:5432/s2t?application_name=gw"
        );
        assert_eq!(s.mode, TlsMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));

        let (rest, s) = split("postgresql://gw@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgresql://gw@h/db", TlsMode::Require)
        );
        let (_, s) = split("postgres://gw@h/db").unwrap();
        assert_eq!(s.mode, TlsMode::Prefer, "the default is unchanged");
        let (_, s) = split("postgres://gw@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            s.mode,
            TlsMode::VerifyCa,
            "a root certificate makes require verify"
        );
        assert!(matches!(
            split("postgres://gw@h/db?sslmode=strict"),
            Err(TlsConfigError::Mode(_))
        ));
    }

    #[test]
    fn key_value_strings_work_too() {
        let (rest, s) =
            split("host=db.example user=gw dbname=s2t sslmode=verify-ca sslrootcert='/ca.pem'")
                .unwrap();
        assert_eq!(rest, "host=db.example user=gw dbname=s2t");
        assert_eq!(s.mode, TlsMode::VerifyCa);
        assert_eq!(s.root_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn plain_modes_build_no_connector_and_tls_modes_do() {
        let t = target("postgres://gw@127.0.0.1:5432/s2t").unwrap();
        assert!(t.tls.is_none());
        assert_eq!(t.config.get_ssl_mode(), SslMode::Prefer);
        let t = target("postgres://gw@127.0.0.1:5432/s2t?sslmode=disable").unwrap();
        assert!(t.tls.is_none());
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        for mode in ["require", "verify-ca", "verify-full"] {
            let t = target(&format!("postgres://gw@127.0.0.1/s2t?sslmode={mode}")).unwrap();
            assert!(t.tls.is_some(), "{mode}");
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{mode}");
        }
    }

    #[test]
    fn a_missing_or_empty_root_certificate_is_a_clear_error() {
        let err = target("postgres://gw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("s2t-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = target(&format!(
            "postgres://gw@h/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ))
        .unwrap_err();
        std::fs::remove_file(&empty).ok();
        assert!(matches!(err, TlsConfigError::RootCert { .. }), "{err}");
    }
}
