//! The HTTP surface. Handlers stay thin: parse, call the extension inside
//! [`crate::db::begin_as`], shape the answer.

mod admin;
mod audio;
mod auth;
mod me;
mod openai;
mod openai_realtime;
mod ops;
mod rag;
mod realtime;
mod recordings;
mod search;

use crate::config::CorsOrigins;
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
        .route("/admin/users", get(admin::list_users))
        .route(
            "/admin/users/{id}",
            axum::routing::patch(admin::change_user),
        )
        .route("/admin/plans", get(admin::list_plans))
        .route("/admin/plans/{code}", put(admin::put_plan))
        .route(
            "/billing/webhook",
            post(admin::billing_webhook).layer(DefaultBodyLimit::max(admin::WEBHOOK_MAX_BYTES)),
        )
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
        .route("/search/semantic", get(search::semantic))
        .route("/rag/ask", post(rag::ask))
        .route("/rag/history", get(rag::history))
        .route("/ws/s2t", get(realtime::ws))
        .route("/ws/ticket", post(realtime::ticket))
        .route("/v1/realtime", get(openai_realtime::realtime))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::layer,
        ))
        .layer(cors(&state.cors))
        .with_state(state)
}

fn cors(origins: &CorsOrigins) -> CorsLayer {
    let allow = match origins {
        // Never with credentials: the API takes bearer tokens, not cookies,
        // and `*` with credentials is what browsers refuse anyway.
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::SameOrigin => AllowOrigin::list(Vec::<HeaderValue>::new()),
        CorsOrigins::List(list) => AllowOrigin::list(list.clone()),
    };
    CorsLayer::new()
        .allow_origin(allow)
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

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An access token from `/auth/login` or `/auth/refresh`: a signed-in
    /// session.
    Session,
    /// A long-lived `s2t_…` API key.
    ApiKey,
}

/// The authenticated caller: who, and how. Kept in the request's
/// extensions, so extracting it twice looks the key up once.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user: Uuid,
    pub method: AuthMethod,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(*caller);
        }
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
        let caller = if token.starts_with(crate::tokens::API_KEY_PREFIX) {
            let client = crate::db::client(&state.pool).await?;
            let user: Option<Uuid> = client
                .query_one(
                    "SELECT s2t.api_key_user($1)",
                    &[&crate::tokens::token_hash(token)],
                )
                .await?
                .get(0);
            Caller {
                user: user
                    .ok_or_else(|| ApiError::unauthorized("unknown, revoked or expired API key"))?,
                method: AuthMethod::ApiKey,
            }
        } else {
            let claims = state
                .jwt
                .verify(token)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            Caller {
                user: claims.sub,
                method: AuthMethod::Session,
            }
        };
        parts.extensions.insert(caller);
        Ok(caller)
    }
}

/// The user an access token or API key names. Rejects with 401 and the
/// reason. Whether the account is still active is checked by
/// [`crate::db::begin_as`], on every request that reads user data.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, state)
            .await
            .map(|c| AuthUser(c.user))
    }
}

/// A user signed in with an access token, not an API key: for what a key
/// must not be able to do (create more keys), so a leaked key cannot mint
/// itself successors that outlive its revocation.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser(pub Uuid);

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.method {
            AuthMethod::Session => Ok(SessionUser(caller.user)),
            AuthMethod::ApiKey => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "an API key cannot do this; sign in and use your access token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Defence in depth: row-level security already confines every UPDATE
    /// and DELETE to the caller's rows, but each statement a handler sends
    /// names the user too, so a policy mistake alone cannot widen one.
    #[test]
    fn every_handler_update_and_delete_names_the_user() {
        let sources = [
            ("auth.rs", include_str!("auth.rs")),
            ("me.rs", include_str!("me.rs")),
            ("openai.rs", include_str!("openai.rs")),
            ("ops.rs", include_str!("ops.rs")),
            ("recordings.rs", include_str!("recordings.rs")),
        ];
        let mut checked = 0;
        for (file, text) in sources {
            for (at, _) in text.match_indices('"') {
                let rest = &text[at + 1..];
                let literal = &rest[..rest.find('"').unwrap_or(rest.len())];
                let upper = literal.trim_start().to_ascii_uppercase();
                if upper.starts_with("UPDATE S2T.") || upper.starts_with("DELETE FROM S2T.") {
                    checked += 1;
                    assert!(
                        upper.contains("USER_ID = $"),
                        "{file}: {literal:?} does not name the user"
                    );
                }
            }
        }
        assert!(
            checked >= 4,
            "found only {checked} statements; is the scan broken?"
        );
    }
}
