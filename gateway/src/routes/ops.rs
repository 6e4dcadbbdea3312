//! Liveness, readiness, metrics, and the JSON 404.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers, the gateway's role does not bypass
/// row-level security, and the installed extension is the version this
/// gateway was built with.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let client = crate::db::client(&state.pool).await?;
    if let Some(problem) = crate::db::unsafe_role(&client).await? {
        let mut e = ApiError::unavailable(problem.clone());
        e.problem.detail = problem;
        e.retry_after = None;
        return Err(e);
    }
    let row = client
        .query_opt(
            "SELECT extversion, s2t.extension_version() FROM pg_extension WHERE extname = 'pg_s2t'",
            &[],
        )
        .await?;
    let expected = env!("CARGO_PKG_VERSION");
    let Some(row) = row else {
        return Err(ApiError::unavailable("pg_s2t is not installed"));
    };
    let (installed, library): (String, String) = (row.get(0), row.get(1));
    if installed != expected || library != expected {
        let mut e = ApiError::unavailable(format!(
            "extension {installed} (library {library}), gateway expects {expected}"
        ));
        e.problem.detail = format!(
            "pg_s2t {installed} is installed but this gateway needs {expected}; run ALTER EXTENSION pg_s2t UPDATE"
        );
        return Err(e);
    }
    Ok(Json(
        serde_json::json!({"status": "ready", "database": "ok", "extension": installed}),
    ))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Queue depth is best effort: metrics must answer while the database is down.
    let mut queue = Vec::new();
    if let Ok(client) = state.pool.get().await {
        if let Ok(rows) = client
            .query("SELECT state, jobs FROM s2t.queue_stats()", &[])
            .await
        {
            queue = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&queue),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

pub async fn docs() -> axum::response::Html<String> {
    axum::response::Html(crate::openapi::html(&crate::openapi::document()))
}
