//! The connection pool and the one way handlers reach user data: a
//! transaction that has named its user for row-level security, and checked
//! that the user may still act.

use crate::error::{ApiError, ApiResult};
use crate::pgtls::Target;
use axum::http::StatusCode;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Transaction};
use uuid::Uuid;

/// A pool over `target` (TLS when its URL asks for it). `wait` bounds how
/// long a request waits for a free connection: without it, a pool held by
/// slow requests would hang every other request.
pub fn pool(target: &Target, size: usize, wait: Duration) -> anyhow::Result<Pool> {
    let recycling = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &target.tls {
        Some(tls) => Manager::from_config(target.config.clone(), tls.clone(), recycling),
        None => Manager::from_config(target.config.clone(), NoTls, recycling),
    };
    Ok(Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Begin a transaction acting for `user`: the extension's policies then show
/// only that user's rows, whatever the handler's SQL says.
///
/// It also reads the user's status, so a disabled account stops at its next
/// request rather than when its access token expires. Both statements go in
/// one simple-protocol round trip (the id is a formatted UUID, so it cannot
/// carry SQL), which is one fewer than the prepared `set_config` it replaces.
pub async fn begin_as(client: &mut Client, user: Uuid) -> ApiResult<Transaction<'_>> {
    let tx = client.transaction().await?;
    let messages = tx
        .simple_query(&format!(
            "SELECT set_config('s2t.user_id', '{user}', true);
             SELECT status FROM s2t.users WHERE id = '{user}'"
        ))
        .await?;
    let status = second_statement_value(&messages);
    match status.as_deref() {
        Some("active") => Ok(tx),
        None => Err(ApiError::unauthorized("this account no longer exists")),
        Some(other) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this account is {other}"),
        )),
    }
}

/// The first column of the first row of the second statement, if any.
fn second_statement_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    let mut statement = 0;
    for m in messages {
        match m {
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            SimpleQueryMessage::Row(row) if statement == 1 => {
                return row.get(0).map(str::to_string)
            }
            _ => {}
        }
    }
    None
}

/// A pooled connection, or 503.
pub async fn client(pool: &Pool) -> ApiResult<deadpool_postgres::Object> {
    pool.get().await.map_err(ApiError::from)
}

/// Why this connection's role must not serve the API, if it must not: a
/// superuser or a `BYPASSRLS` role (itself, or one it can become) skips
/// row-level security, so one handler bug would show users each other's
/// data.
pub async fn unsafe_role(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT string_agg(format('%I (%s)', r.rolname,
                        concat_ws(', ', CASE WHEN r.rolsuper THEN 'superuser' END,
                                        CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END)),
                        '; ' ORDER BY r.rolname),
                    current_user::text
               FROM pg_roles r
              WHERE (r.rolsuper OR r.rolbypassrls)
                AND (r.rolname = current_user OR pg_has_role(current_user, r.oid, 'MEMBER'))",
            &[],
        )
        .await?;
    let (found, me): (Option<String>, String) = (row.get(0), row.get(1));
    Ok(found.map(|roles| {
        format!(
            "the gateway's database role {me} bypasses row-level security through {roles}; connect as a plain member of s2t_app"
        )
    }))
}
