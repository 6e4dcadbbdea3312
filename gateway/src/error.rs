//! Errors as RFC 9457 problem details. Every failure leaves through
//! [`ApiError`]; database errors map by SQLSTATE in one place
//! ([`s2t_core::sqlstate`]), and internal errors are logged with the request
//! id by the logging layer, never shown to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Per-field messages for 422.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
    /// The extension's SQLSTATE, when it raised the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Machine-readable specifics (for quotas: limit, used, limit_value,
    /// resets_at).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug)]
pub struct ApiError {
    pub problem: Problem,
    pub retry_after: Option<u64>,
    /// What to log (never sent) for 5xx.
    pub internal: Option<String>,
}

/// Carried from an error response to the logging layer.
#[derive(Debug, Clone)]
pub struct InternalError(pub String);

fn slug(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "-")
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            problem: Problem {
                kind: format!("https://pg-s2t.dev/problems/{}", slug(status)),
                title: status.canonical_reason().unwrap_or("Error").to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                errors: BTreeMap::new(),
                code: None,
                extra: BTreeMap::new(),
            },
            retry_after: None,
            internal: None,
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 422 with one message per field.
    pub fn invalid(errors: BTreeMap<String, String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "some fields are not valid; see errors",
        );
        e.problem.errors = errors;
        e
    }

    pub fn internal(what: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "something went wrong on our side; the request id identifies it in our logs",
        );
        e.internal = Some(what.into());
        e
    }

    pub fn unavailable(what: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not reachable right now; try again shortly",
        );
        e.internal = Some(what.into());
        e.retry_after = Some(5);
        e
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        let Some(db) = e.as_db_error() else {
            return ApiError::unavailable(format!("database: {e}"));
        };
        ApiError::from_sqlstate(
            db.code().code(),
            db.message(),
            db.detail().unwrap_or_default(),
            db.hint().unwrap_or_default(),
        )
    }
}

impl ApiError {
    /// The answer for an error the database raised (or that the gateway
    /// raises on its behalf, in the same shape, e.g. the quota pre-check
    /// before an upload is read): SQLSTATE, message, detail and hint.
    pub fn from_sqlstate(code: &str, message: &str, detail: &str, hint: &str) -> ApiError {
        let status = s2t_core::sqlstate::http_status(code).or(match code {
            "23505" => Some(409),
            // The extension's own refusals of a role or user (a paid plan,
            // resetting usage, a non-admin): the message says what and why.
            "42501" => Some(403),
            // Malformed values, too long, out of range, a check failed,
            // NUL or an unencodable character in text.
            "22P02" | "22001" | "22003" | "23514" | "22021" | "22P05" => Some(422),
            _ => None,
        });
        let Some(status) = status.and_then(|s| StatusCode::from_u16(s).ok()) else {
            return ApiError::internal(format!("database error {code}: {message}"));
        };
        let mut text = message.to_string();
        for extra in [detail, hint] {
            if !extra.is_empty() {
                text.push_str(". ");
                text.push_str(extra);
            }
        }
        let mut err = ApiError::new(status, text);
        err.problem.code = Some(code.to_string());
        if code.starts_with("S2Q") {
            // "limit: monthly_usage_limit; used: 3; limit_value: 3; resets_at: ..."
            for (k, v) in detail.split("; ").filter_map(|kv| kv.split_once(": ")) {
                let value = v
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| v.into());
                err.problem.extra.insert(k.to_string(), value);
            }
            let reset = err
                .problem
                .extra
                .get("resets_at")
                .and_then(|v| v.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if let Some(reset) = reset {
                let secs = (reset.timestamp() - chrono::Utc::now().timestamp()).max(1);
                err.retry_after = Some(secs as u64);
            }
        }
        if let Some(secs) = detail
            .split("; ")
            .find_map(|kv| kv.strip_prefix("retry_after: "))
            .and_then(|v| v.parse::<u64>().ok())
        {
            err.retry_after = Some(secs);
        }
        if code == s2t_core::sqlstate::INVALID_INPUT || code == s2t_core::sqlstate::CONFLICT {
            // The extension names the field in the detail ("field: email").
            if let Some(field) = detail.strip_prefix("field: ") {
                err.problem
                    .errors
                    .insert(field.to_string(), message.to_string());
            }
        }
        err
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection as J;
        let status = match &e {
            J::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            J::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        ApiError::unavailable(format!("pool: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.problem).expect("problem serialises");
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="pg_s2t""#),
            );
        }
        if let Some(internal) = self.internal {
            res.extensions_mut().insert(InternalError(internal));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
