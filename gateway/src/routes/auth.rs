//! `/auth/*`: registration, login, refresh-token rotation, logout.

use crate::error::{ApiError, ApiResult};
use crate::{tokens, AppState};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct Register {
    #[serde(default)]
    email: String,
    #[serde(default)]
    user_name: String,
    #[serde(default)]
    password: String,
    name: Option<String>,
}

/// Every field's problem at once, as a form shows them.
fn registration_errors(r: &Register) -> BTreeMap<String, String> {
    use s2t_core::validate;
    let mut errors = BTreeMap::new();
    if let Err(p) = validate::normalize_email(&r.email) {
        errors.insert("email".into(), p.message);
    }
    if let Err(p) = validate::validate_user_name(&r.user_name) {
        errors.insert("user_name".into(), p.message);
    }
    let chars = r.password.chars().count();
    if !(8..=256).contains(&chars) {
        errors.insert(
            "password".into(),
            "password must be 8 to 256 characters".into(),
        );
    }
    if let Err(p) = validate::validate_display_name(r.name.as_deref()) {
        errors.insert("name".into(), p.message);
    }
    errors
}

/// 503 when every hashing slot stayed busy for the whole wait.
fn hashing_busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many sign-ins at once; try again in a moment",
    )
    .with_retry_after(1)
}

/// The address a request is counted under (IPv6 per /64).
fn address_key(state: &AppState, peer: SocketAddr, headers: &axum::http::HeaderMap) -> String {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    crate::throttle::address_key(crate::throttle::client_address(
        peer.ip(),
        forwarded,
        &state.config.trusted_proxies,
    ))
}

/// The longest e-mail address there can be, and so the longest login: the
/// throttle keeps every login name it sees, so they must be short.
pub const MAX_LOGIN_BYTES: usize = 254;

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Register>,
) -> ApiResult<Response> {
    let errors = registration_errors(&body);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    // Every valid registration counts, successful or not: each costs a
    // hash, and a flood of accounts from one place is the abuse.
    let address = address_key(&state, peer, &headers);
    state
        .register_throttle
        .begin(&address, Instant::now())
        .map_err(|wait| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many registrations from this address; try again in {secs} s"),
            )
            .with_retry_after(secs)
        })?;
    let password = body.password.clone();
    let hash = state
        .hashing
        .run(move || tokens::hash_password(&password))
        .await
        .map_err(|_| hashing_busy())?;
    let mut client = crate::db::client(&state.pool).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "CALL s2t.sp_register_user($1, $2, $3, $4, 'FREE')",
        &[&body.email, &body.user_name, &hash, &body.name],
    )
    .await?;
    let row = tx
        .query_one("SELECT user_id FROM s2t.auth_lookup($1)", &[&body.email])
        .await?;
    tx.commit().await?;
    let id: Uuid = row.get(0);
    let email = s2t_core::validate::normalize_email(&body.email).unwrap_or(body.email);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, "/me".to_string())],
        Json(serde_json::json!({
            "id": id, "email": email, "user_name": body.user_name,
            "name": body.name, "plan": "FREE",
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct Login {
    #[serde(alias = "email", alias = "user_name", alias = "username", default)]
    login: String,
    #[serde(default)]
    password: String,
}

fn token_response(state: &AppState, user: Uuid, refresh_token: String) -> Response {
    let now = chrono::Utc::now().timestamp();
    let ttl = state.config.access_ttl_secs;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({
            "access_token": state.jwt.issue(user, now, ttl),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": ttl,
        })),
    )
        .into_response()
}

fn throttled(wait: std::time::Duration) -> ApiError {
    // Rounded up: a client that waits exactly this long gets in.
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins; try again in {secs} s"),
    )
    .with_retry_after(secs)
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Login>,
) -> ApiResult<Response> {
    let mut errors = BTreeMap::new();
    if body.login.trim().is_empty() {
        errors.insert(
            "login".into(),
            "give an e-mail address or a user name".into(),
        );
    } else if body.login.len() > MAX_LOGIN_BYTES {
        errors.insert(
            "login".into(),
            format!("a login is at most {MAX_LOGIN_BYTES} bytes"),
        );
    }
    if body.password.is_empty() {
        errors.insert("password".into(), "password is required".into());
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let login_key = body.login.trim().to_lowercase();
    let address = address_key(&state, peer, &headers);
    // Counted before verifying, so guesses sent in parallel see each other.
    let now = Instant::now();
    if let Err(wait) = state.throttle.begin(&login_key, now) {
        return Err(throttled(wait));
    }
    if let Err(wait) = state.address_throttle.begin(&address, now) {
        // Not an attempt on this login after all.
        state.throttle.refund(&login_key);
        return Err(throttled(wait));
    }
    let outcome = verify(&state, &body).await;
    let user = match outcome {
        Ok(Some(user)) => user,
        Ok(None) => {
            // The wait runs from the failure, not from the request's start:
            // verifying took a noticeable while.
            let failed_at = Instant::now();
            state.throttle.failed(&login_key, failed_at);
            state.address_throttle.failed(&address, failed_at);
            return Err(ApiError::unauthorized("wrong login or password"));
        }
        Err(e) => {
            // Not the client's failure (busy, database down): take it back.
            state.throttle.refund(&login_key);
            state.address_throttle.refund(&address);
            return Err(e);
        }
    };
    state.address_throttle.refund(&address);
    let status: String = user.1;
    let user = user.0;
    if status != "active" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this account is disabled",
        ));
    }
    state.throttle.succeeded(&login_key);
    let refresh = tokens::new_refresh_token();
    let mut client = crate::db::client(&state.pool).await?;
    let tx = crate::db::begin_as(&mut client, user).await?;
    tx.execute(
        "SELECT s2t.issue_refresh_token($1, $2, make_interval(secs => $3::float8))",
        &[
            &user,
            &tokens::token_hash(&refresh),
            &(state.config.refresh_ttl_secs as f64),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(token_response(&state, user, refresh))
}

/// The user and their status when the password is right, `None` when the
/// login or the password is wrong (the same work either way, so the
/// answer's timing does not tell which).
async fn verify(state: &AppState, body: &Login) -> ApiResult<Option<(Uuid, String)>> {
    let client = crate::db::client(&state.pool).await?;
    let row = client
        .query_opt(
            "SELECT user_id, password_hash, status FROM s2t.auth_lookup($1)",
            &[&body.login],
        )
        .await?;
    drop(client);
    let (user, hash, status): (Option<Uuid>, String, String) = match &row {
        Some(r) => (Some(r.get(0)), r.get(1), r.get(2)),
        None => (None, tokens::decoy_hash().to_string(), String::new()),
    };
    let password = body.password.clone();
    let ok = state
        .hashing
        .run(move || tokens::verify_password(&password, &hash))
        .await
        .map_err(|_| hashing_busy())?;
    Ok(user.filter(|_| ok).map(|u| (u, status)))
}

#[derive(Debug, Deserialize)]
pub struct RefreshBody {
    #[serde(default)]
    refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> ApiResult<Response> {
    if body.refresh_token.is_empty() {
        return Err(ApiError::invalid(BTreeMap::from([(
            "refresh_token".to_string(),
            "refresh_token is required".to_string(),
        )])));
    }
    let next = state.jwt.successor(&body.refresh_token);
    let client = crate::db::client(&state.pool).await?;
    let row = client
        .query_one(
            "SELECT user_id, outcome FROM s2t.rotate_refresh_token($1, $2,
                 make_interval(secs => $3::float8), make_interval(secs => $4::float8))",
            &[
                &tokens::token_hash(&body.refresh_token),
                &tokens::token_hash(&next),
                &(state.config.refresh_ttl_secs as f64),
                &(state.config.refresh_grace_secs as f64),
            ],
        )
        .await?;
    let (user, outcome): (Option<Uuid>, String) = (row.get(0), row.get(1));
    match (outcome.as_str(), user) {
        ("rotated", Some(user)) => Ok(token_response(&state, user, next)),
        ("reused", _) => Err(ApiError::unauthorized(
            "this refresh token was already used, so the session has been revoked; log in again",
        )),
        ("expired", _) => Err(ApiError::unauthorized(
            "the refresh token has expired; log in again",
        )),
        ("revoked", _) => Err(ApiError::unauthorized(
            "the refresh token was revoked; log in again",
        )),
        ("disabled", _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this account is disabled",
        )),
        _ => Err(ApiError::unauthorized("unknown refresh token")),
    }
}

pub async fn logout(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> ApiResult<StatusCode> {
    if !body.refresh_token.is_empty() {
        let client = crate::db::client(&state.pool).await?;
        client
            .execute(
                "SELECT s2t.revoke_refresh_token($1)",
                &[&tokens::token_hash(&body.refresh_token)],
            )
            .await?;
    }
    // The same answer for unknown tokens: logout reveals nothing.
    Ok(StatusCode::NO_CONTENT)
}
