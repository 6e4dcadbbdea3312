//! `/me`, `/me/avatar`, `/me/stats`, `/me/plan` and `/plans`.

use super::{AuthUser, Body, SessionUser};
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
    tx.execute(
        "UPDATE s2t.user_profiles SET name = $1 WHERE user_id = $2",
        &[&body.name, &user],
    )
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
        "UPDATE s2t.user_profiles SET avatar_url = $1 WHERE user_id = $2",
        &[&format!("/me/avatar?v={version}"), &user],
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
    let cycle_start: chrono::DateTime<chrono::Utc> = r.get(10);
    let q = tx
        .query_one(
            "SELECT p.monthly_questions, coalesce(u.questions, 0)::int
               FROM s2t.plans p
               LEFT JOIN s2t.question_usage u ON u.user_id = $1 AND u.cycle_start = $3
              WHERE p.code = $2",
            &[&user, &r.get::<_, String>(7), &cycle_start],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "questions_used": q.get::<_, i32>(1),
        "monthly_questions": q.get::<_, i32>(0),
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
                    monthly_minutes, monthly_usage_limit, monthly_questions
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
                "monthly_questions": r.get::<_, i32>(8),
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

#[derive(Debug, Deserialize)]
pub struct NewApiKey {
    #[serde(default)]
    name: String,
    /// Days from now until the key stops working (1 to 3650).
    expires_in_days: Option<i64>,
    /// Or the moment it stops working (within 10 years).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Longest a key may live when it has an expiry.
pub const MAX_KEY_DAYS: i64 = 3650;

/// When a new key expires (`None`: never), or the message for the field.
pub fn key_expiry(
    in_days: Option<i64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, (&'static str, String)> {
    match (in_days, at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err((
            "expires_at",
            "give expires_in_days or expires_at, not both".into(),
        )),
        (Some(days), None) if (1..=MAX_KEY_DAYS).contains(&days) => {
            Ok(Some(now + chrono::Duration::days(days)))
        }
        (Some(_), None) => Err((
            "expires_in_days",
            format!("expires_in_days must be 1 to {MAX_KEY_DAYS}"),
        )),
        (None, Some(at)) if at <= now => Err(("expires_at", "expires_at is in the past".into())),
        (None, Some(at)) if at > now + chrono::Duration::days(MAX_KEY_DAYS) => Err((
            "expires_at",
            format!("expires_at is more than {MAX_KEY_DAYS} days away"),
        )),
        (None, Some(at)) => Ok(Some(at)),
    }
}

/// `POST /me/api-keys`: the key is in this answer only. Only a signed-in
/// session may create keys; the 20-key limit is held by the database
/// (`s2t.create_api_key` locks the user's keys, so concurrent requests
/// cannot both take the last place).
pub async fn create_api_key(
    State(state): State<AppState>,
    SessionUser(user): SessionUser,
    Body(body): Body<NewApiKey>,
) -> ApiResult<Response> {
    let name = body.name.trim().to_string();
    let mut errors = BTreeMap::new();
    if name.is_empty() || name.chars().count() > 100 {
        errors.insert("name".into(), "name must be 1 to 100 characters".into());
    }
    let expires_at = match key_expiry(body.expires_in_days, body.expires_at, chrono::Utc::now()) {
        // To the microsecond, as PostgreSQL keeps it, so the answer and
        // the list agree.
        Ok(at) => at.map(|t| chrono::SubsecRound::trunc_subsecs(t, 6)),
        Err((field, message)) => {
            errors.insert(field.into(), message);
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let key = crate::tokens::new_api_key();
    let prefix: String = key.chars().take(10).collect();
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = tx
        .query_one(
            "SELECT id, created_at FROM s2t.create_api_key($1, $2, $3, $4, $5)",
            &[
                &user,
                &name,
                &prefix,
                &crate::tokens::token_hash(&key),
                &expires_at,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "id": row.get::<_, uuid::Uuid>(0), "name": name, "prefix": prefix, "key": key,
            "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>(1),
            "expires_at": expires_at,
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
            "SELECT id, name, prefix, created_at, last_used_at, expires_at,
                    expires_at IS NOT NULL AND expires_at <= now()
               FROM s2t.api_keys
              WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
            &[&user],
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
                "expires_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(5),
                "expired": r.get::<_, bool>(6),
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
            "UPDATE s2t.api_keys SET revoked_at = now()
              WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            &[&id, &user],
        )
        .await?;
    tx.commit().await?;
    if n == 0 {
        return Err(ApiError::not_found("API key"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn key_expiry_takes_days_or_a_moment_within_ten_years() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
        assert_eq!(key_expiry(None, None, now), Ok(None));
        assert_eq!(
            key_expiry(Some(30), None, now),
            Ok(Some(now + Duration::days(30)))
        );
        assert_eq!(
            key_expiry(Some(0), None, now).unwrap_err().0,
            "expires_in_days"
        );
        assert_eq!(
            key_expiry(Some(3651), None, now).unwrap_err().0,
            "expires_in_days"
        );
        assert!(key_expiry(Some(3650), None, now).is_ok());
        let at = now + Duration::hours(1);
        assert_eq!(key_expiry(None, Some(at), now), Ok(Some(at)));
        assert_eq!(
            key_expiry(None, Some(now - Duration::seconds(1)), now)
                .unwrap_err()
                .0,
            "expires_at"
        );
        assert_eq!(
            key_expiry(None, Some(now + Duration::days(3651)), now)
                .unwrap_err()
                .0,
            "expires_at"
        );
        assert!(key_expiry(Some(1), Some(at), now).is_err(), "not both");
    }
}
