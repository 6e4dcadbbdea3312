//! Administration (`/admin/...`) and the billing webhook. Whether a caller
//! is an admin is decided by the extension (`users.role` in the database,
//! checked inside every `s2t.admin_*` function), not here; these handlers
//! only require a signed-in session, so an API key never administers.

use super::{Body, SessionUser};
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Billing events are small; anything larger is not one.
pub const WEBHOOK_MAX_BYTES: usize = 64 * 1024;
/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "s2t-signature";

#[derive(Debug, Deserialize)]
pub struct UserQuery {
    search: Option<String>,
    limit: Option<i32>,
    offset: Option<i32>,
}

pub async fn list_users(
    State(state): State<AppState>,
    SessionUser(admin): SessionUser,
    Query(q): Query<UserQuery>,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, admin).await?;
    let rows = tx
        .query(
            "SELECT id, email, user_name, role, status, created_at, plan_code, usage_count,
                    used_seconds, reserved_seconds, cycle_end
               FROM s2t.admin_list_users($1, $2, $3)",
            &[&q.search, &q.limit.unwrap_or(50), &q.offset.unwrap_or(0)],
        )
        .await?;
    let users: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, Uuid>(0),
                "email": r.get::<_, String>(1),
                "user_name": r.get::<_, String>(2),
                "role": r.get::<_, String>(3),
                "status": r.get::<_, String>(4),
                "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(5),
                "plan_code": r.get::<_, Option<String>>(6),
                "usage_count": r.get::<_, Option<i32>>(7),
                "used_seconds": r.get::<_, Option<i32>>(8),
                "reserved_seconds": r.get::<_, Option<i32>>(9),
                "resets_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(10),
            })
        })
        .collect();
    tx.commit().await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    status: Option<String>,
    plan_code: Option<String>,
    #[serde(default)]
    reset_usage: bool,
}

/// `PATCH /admin/users/{id}`: any of status, plan and a usage reset, in one
/// transaction (all or nothing).
pub async fn change_user(
    State(state): State<AppState>,
    SessionUser(admin): SessionUser,
    Path(user): Path<Uuid>,
    Body(change): Body<UserChange>,
) -> ApiResult<Json<Value>> {
    if change.status.is_none() && change.plan_code.is_none() && !change.reset_usage {
        return Err(ApiError::bad_request(
            "give status, plan_code or reset_usage",
        ));
    }
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, admin).await?;
    if let Some(status) = &change.status {
        tx.execute("SELECT s2t.admin_set_user_status($1, $2)", &[&user, status])
            .await?;
    }
    if let Some(plan) = &change.plan_code {
        let r = tx
            .query_one(
                "SELECT success, message FROM s2t.admin_change_plan($1, $2, $3)",
                &[&user, plan, &change.reset_usage],
            )
            .await?;
        let (ok, message): (bool, String) = (r.get(0), r.get(1));
        if !ok {
            return Err(ApiError::new(StatusCode::CONFLICT, message));
        }
    } else if change.reset_usage {
        tx.execute("SELECT s2t.admin_reset_usage($1)", &[&user])
            .await?;
    }
    let r = tx
        .query_one(
            "SELECT status, plan_code, usage_count, used_seconds FROM s2t.admin_list_users(NULL, 500)
              WHERE id = $1",
            &[&user],
        )
        .await;
    let body = match r {
        Ok(r) => json!({
            "id": user,
            "status": r.get::<_, String>(0),
            "plan_code": r.get::<_, Option<String>>(1),
            "usage_count": r.get::<_, Option<i32>>(2),
            "used_seconds": r.get::<_, Option<i32>>(3),
        }),
        // Beyond the first 500 users the change still stands.
        Err(_) => json!({ "id": user }),
    };
    tx.commit().await?;
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    name: String,
    description: Option<String>,
    plan_type: Option<String>,
    plan_cost: Option<i32>,
    plan_discount: Option<i32>,
    monthly_minutes: i32,
    monthly_usage_limit: i32,
    /// None keeps an existing plan's limit (100 for a new plan).
    monthly_questions: Option<i32>,
}

/// `PUT /admin/plans/{code}`: creates or updates a plan.
pub async fn put_plan(
    State(state): State<AppState>,
    SessionUser(admin): SessionUser,
    Path(code): Path<String>,
    Body(p): Body<PlanBody>,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, admin).await?;
    let id: Uuid = tx
        .query_one(
            "SELECT s2t.admin_upsert_plan($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &code,
                &p.name,
                &p.description,
                &p.plan_type,
                &p.plan_cost,
                &p.plan_discount,
                &p.monthly_minutes,
                &p.monthly_usage_limit,
                &p.monthly_questions,
            ],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "code": code })))
}

/// `GET /admin/plans`: the plans, for admins (the same list as `/plans`,
/// behind the admin check so the surface is complete).
pub async fn list_plans(
    State(state): State<AppState>,
    SessionUser(admin): SessionUser,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, admin).await?;
    // The cheapest admin check there is: list no users.
    tx.query("SELECT 1 FROM s2t.admin_list_users(NULL, 1)", &[])
        .await?;
    let rows = tx
        .query(
            "SELECT code, name, description, plan_type, plan_cost, plan_discount,
                    monthly_minutes, monthly_usage_limit, monthly_questions
               FROM s2t.plans ORDER BY monthly_minutes, code",
            &[],
        )
        .await?;
    tx.commit().await?;
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

/// `POST /billing/webhook`: passes the raw body and its signature to the
/// database, which holds the secret and verifies both; the gateway never
/// sees the secret. A refused signature is 401.
pub async fn billing_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Ok(payload) = std::str::from_utf8(&body) else {
        return Err(ApiError::bad_request("the event must be UTF-8 JSON"));
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let c = client(&state.pool).await?;
    let r = c
        .query_one(
            "SELECT s2t.apply_billing_event($1, $2)",
            &[&payload, &signature],
        )
        .await;
    match r {
        Ok(row) => Ok(Json(json!({ "result": row.get::<_, String>(0) }))),
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
            let why = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            let mut err = ApiError::unauthorized(why);
            err.problem.code = Some("42501".into());
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}
