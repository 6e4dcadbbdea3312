//! The connection pool and the one way handlers reach user data: a
//! transaction that has named its user for row-level security.

use crate::error::{ApiError, ApiResult};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls, Transaction};
use uuid::Uuid;

pub fn pool(database_url: &str, size: usize) -> anyhow::Result<Pool> {
    let config: tokio_postgres::Config = database_url.parse()?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(size.max(1)).build()?)
}

/// Begin a transaction acting for `user`: the extension's policies then show
/// only that user's rows, whatever the handler's SQL says.
pub async fn begin_as(client: &mut Client, user: Uuid) -> ApiResult<Transaction<'_>> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('s2t.user_id', $1, true)",
        &[&user.to_string()],
    )
    .await?;
    Ok(tx)
}

/// A pooled connection, or 503.
pub async fn client(pool: &Pool) -> ApiResult<deadpool_postgres::Object> {
    pool.get().await.map_err(ApiError::from)
}
