//! `/me`, `/me/avatar`, `/me/stats`, `/me/plan` and `/plans`.

use super::{AuthUser, Body};
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const AVATAR_MAX_BYTES: usize = 2 * 1024 * 1024;

async fn me_json(tx: &tokio_postgres::Transaction<'_>) -> ApiResult<Value> {
    let row = tx
        .query_opt(
            "SELECT u.id, u.email, u.user_name, u.verified, u.role, u.status, u.created_at,
                    p.name, p.avatar_url, pl.code
               FROM s2t.users u
               LEFT JOIN s2t.user_profiles p ON p.user_id = u.id
               LEFT JOIN s2t.user_subscriptions s ON s.user_id = u.id
               LEFT JOIN s2t.plans pl ON pl.id = s.plan_id",
            &[],
        )
        .await?
        // A token for a deleted user.
        .ok_or_else(|| ApiError::unauthorized("this account no longer exists"))?;
    Ok(json!({
        "id": row.get::<_, uuid::Uuid>(0),
        "email": row.get::<_, String>(1),
        "user_name": row.get::<_, String>(2),
        "verified": row.get::<_, bool>(3),
        "role": row.get::<_, String>(4),
        "status": row.get::<_, String>(5),
        "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>(6),
        "name": row.get::<_, Option<String>>(7),
        "avatar_url": row.get::<_, Option<String>>(8),
        "plan": row.get::<_, Option<String>>(9),
    }))
}

pub async fn get_me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let me = me_json(&tx).await?;
    tx.commit().await?;
    Ok(Json(me))
}

#[derive(Debug, Deserialize)]
pub struct PatchMe {
    name: Option<String>,
}

pub async fn patch_me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Body(body): Body<PatchMe>,
) -> ApiResult<Json<Value>> {
    if let Err(p) = s2t_core::validate::validate_display_name(body.name.as_deref()) {
        return Err(ApiError::invalid(BTreeMap::from([(
            "name".into(),
            p.message,
        )])));
    }
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    tx.execute("UPDATE s2t.user_profiles SET name = $1", &[&body.name])
        .await?;
    let me = me_json(&tx).await?;
    tx.commit().await?;
    Ok(Json(me))
}

/// The image type its first bytes show, if it is one we keep.
fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else {
        None
    }
}

pub async fn put_avatar(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an avatar may be at most {AVATAR_MAX_BYTES} bytes"),
        )
    })?;
    if body.len() > AVATAR_MAX_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an avatar may be at most {AVATAR_MAX_BYTES} bytes"),
        ));
    }
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(kind) = sniff_image(&body) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the avatar must be a PNG, JPEG, WebP or GIF image",
        ));
    };
    if !declared.is_empty() && !declared.starts_with(kind) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type says {declared} but the bytes are {kind}"),
        ));
    }
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let version: i64 = tx
        .query_one(
            "INSERT INTO s2t.avatars (user_id, content_type, data) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET content_type = excluded.content_type,
                 data = excluded.data, updated_at = now()
             RETURNING (extract(epoch FROM updated_at) * 1000)::bigint",
            &[&user, &kind, &body.as_ref()],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE s2t.user_profiles SET avatar_url = $1",
        &[&format!("/me/avatar?v={version}")],
    )
    .await?;
    let me = me_json(&tx).await?;
    tx.commit().await?;
    Ok(Json(me))
}

pub async fn get_avatar(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Response> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = tx
        .query_opt("SELECT content_type, data FROM s2t.avatars", &[])
        .await?
        .ok_or_else(|| ApiError::not_found("avatar"))?;
    tx.commit().await?;
    let (kind, data): (String, Vec<u8>) = (row.get(0), row.get(1));
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=86400".into()),
        ],
        data,
    )
        .into_response())
}

pub async fn stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let r = tx
        .query_one(
            "SELECT total_recordings, total_duration_minutes::float8, total_segments,
                    current_cycle_usage, current_cycle_seconds,
                    quota_usage_percent::float8, quota_minutes_percent::float8,
                    plan_code, monthly_usage_limit, monthly_minutes, cycle_start, cycle_end
               FROM s2t.sp_get_user_stats($1)",
            &[&user],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "total_recordings": r.get::<_, i64>(0),
        "total_duration_minutes": r.get::<_, f64>(1),
        "total_segments": r.get::<_, i64>(2),
        "current_cycle_usage": r.get::<_, i32>(3),
        "current_cycle_seconds": r.get::<_, i32>(4),
        "quota_usage_percent": r.get::<_, f64>(5),
        "quota_minutes_percent": r.get::<_, f64>(6),
        "plan_code": r.get::<_, String>(7),
        "monthly_usage_limit": r.get::<_, i32>(8),
        "monthly_minutes": r.get::<_, i32>(9),
        "cycle_start": r.get::<_, chrono::DateTime<chrono::Utc>>(10),
        "cycle_end": r.get::<_, chrono::DateTime<chrono::Utc>>(11),
        "resets_at": r.get::<_, chrono::DateTime<chrono::Utc>>(11),
    })))
}

pub async fn plans(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let c = client(&state.pool).await?;
    let rows = c
        .query(
            "SELECT code, name, description, plan_type, plan_cost, plan_discount,
                    monthly_minutes, monthly_usage_limit
               FROM s2t.plans ORDER BY monthly_minutes, code",
            &[],
        )
        .await?;
    let plans: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "code": r.get::<_, String>(0),
                "name": r.get::<_, String>(1),
                "description": r.get::<_, Option<String>>(2),
                "plan_type": r.get::<_, String>(3),
                "plan_cost": r.get::<_, i32>(4),
                "plan_discount": r.get::<_, i32>(5),
                "monthly_minutes": r.get::<_, i32>(6),
                "monthly_usage_limit": r.get::<_, i32>(7),
            })
        })
        .collect();
    Ok(Json(json!({ "plans": plans })))
}

#[derive(Debug, Deserialize)]
pub struct ChangePlan {
    #[serde(alias = "plan", default)]
    plan_code: String,
}

pub async fn change_plan(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Body(body): Body<ChangePlan>,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    // Never prorate from the API: it would let users reset their own usage.
    let r = tx
        .query_one(
            "SELECT success, message FROM s2t.sp_change_user_plan($1, $2, false)",
            &[&user, &body.plan_code],
        )
        .await?;
    let (ok, message): (bool, String) = (r.get(0), r.get(1));
    if !ok {
        let status = if message.contains("not found") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::CONFLICT
        };
        return Err(ApiError::new(status, message));
    }
    let me = me_json(&tx).await?;
    tx.commit().await?;
    Ok(Json(json!({ "message": message, "me": me })))
}

/// Active keys a user may hold at once.
const MAX_API_KEYS: i64 = 20;

#[derive(Debug, Deserialize)]
pub struct NewApiKey {
    #[serde(default)]
    name: String,
}

/// `POST /me/api-keys`: the key is in this answer only.
pub async fn create_api_key(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Body(body): Body<NewApiKey>,
) -> ApiResult<Response> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid(BTreeMap::from([(
            "name".into(),
            "name must be 1 to 100 characters".into(),
        )])));
    }
    let key = crate::tokens::new_api_key();
    let prefix: String = key.chars().take(10).collect();
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let active: i64 = tx
        .query_one(
            "SELECT count(*) FROM s2t.api_keys WHERE revoked_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    if active >= MAX_API_KEYS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("at most {MAX_API_KEYS} active API keys; revoke one first"),
        ));
    }
    let row = tx
        .query_one(
            "INSERT INTO s2t.api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
             RETURNING id, created_at",
            &[&user, &name, &prefix, &crate::tokens::token_hash(&key)],
        )
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "id": row.get::<_, uuid::Uuid>(0), "name": name, "prefix": prefix, "key": key,
            "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>(1),
        })),
    )
        .into_response())
}

pub async fn list_api_keys(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let rows = tx
        .query(
            "SELECT id, name, prefix, created_at, last_used_at FROM s2t.api_keys
              WHERE revoked_at IS NULL ORDER BY created_at DESC",
            &[],
        )
        .await?;
    tx.commit().await?;
    let keys: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, uuid::Uuid>(0),
                "name": r.get::<_, String>(1),
                "prefix": r.get::<_, String>(2),
                "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(3),
                "last_used_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(4),
            })
        })
        .collect();
    Ok(Json(json!({ "api_keys": keys })))
}

pub async fn revoke_api_key(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::not_found("API key"))?;
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let n = tx
        .execute(
            "UPDATE s2t.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    tx.commit().await?;
    if n == 0 {
        return Err(ApiError::not_found("API key"));
    }
    Ok(StatusCode::NO_CONTENT)
}
