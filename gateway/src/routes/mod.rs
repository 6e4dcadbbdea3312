//! The HTTP surface. Handlers stay thin: parse, call the extension inside
//! [`crate::db::begin_as`], shape the answer.

mod auth;
mod me;
mod openai;
mod ops;
mod recordings;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

pub fn router(state: AppState) -> Router {
    let upload_limit = DefaultBodyLimit::disable();
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/docs", get(ops::docs))
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/me", get(me::get_me).patch(me::patch_me))
        .route(
            "/me/avatar",
            put(me::put_avatar)
                .get(me::get_avatar)
                .layer(DefaultBodyLimit::max(me::AVATAR_MAX_BYTES + 1024)),
        )
        .route("/me/stats", get(me::stats))
        .route(
            "/me/api-keys",
            post(me::create_api_key).get(me::list_api_keys),
        )
        .route(
            "/me/api-keys/{id}",
            axum::routing::delete(me::revoke_api_key),
        )
        .route("/me/plan", post(me::change_plan))
        .route("/plans", get(me::plans))
        .route(
            "/recordings",
            post(recordings::upload)
                .layer(upload_limit)
                .get(recordings::list),
        )
        .route(
            "/recordings/{id}",
            get(recordings::get_one).delete(recordings::delete),
        )
        .route("/recordings/{id}/events", get(recordings::events))
        .route(
            "/v1/audio/transcriptions",
            post(openai::transcriptions).layer(DefaultBodyLimit::disable()),
        )
        .route("/recordings/{id}/{file}", get(recordings::download))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::layer,
        ))
        .layer(cors(&state.config.cors_origins))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE])
        .expose_headers([header::CONTENT_DISPOSITION, header::RETRY_AFTER])
}

/// `axum::Json` whose rejections are problem details.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// `axum::extract::Query` whose rejections are problem details.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A `{id}` path segment naming a recording: anything but a UUID is a
/// recording that does not exist.
pub struct RecordingId(pub Uuid);

impl FromRequestParts<AppState> for RecordingId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(params) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::not_found("recording"))?;
        params
            .iter()
            .find(|(k, _)| k == "id")
            .and_then(|(_, v)| v.parse().ok())
            .map(RecordingId)
            .ok_or_else(|| ApiError::not_found("recording"))
    }
}

/// The user an access token names. Rejects with 401 and the reason.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <access token>")
        })?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
            })?;
        let token = token.trim();
        if token.starts_with(crate::tokens::API_KEY_PREFIX) {
            let client = crate::db::client(&state.pool).await?;
            let user: Option<Uuid> = client
                .query_one(
                    "SELECT s2t.api_key_user($1)",
                    &[&crate::tokens::token_hash(token)],
                )
                .await?
                .get(0);
            return user
                .map(AuthUser)
                .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"));
        }
        let claims = state
            .jwt
            .verify(token)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        Ok(AuthUser(claims.sub))
    }
}
