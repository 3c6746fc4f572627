//! A fresh PostgreSQL database per test, on the throwaway cluster named by
//! `GHLFLOW_TEST_POSTGRES` (an admin URL; `.ci/postgres.sh` starts one and prints it).
//! Without it the PostgreSQL tests print a one-line notice and return early, unless
//! `GHLFLOW_REQUIRE_POSTGRES=1` (CI), which makes a missing cluster a failure.

use std::sync::atomic::{AtomicU32, Ordering};

use ghlflow::store::PgStore;
use sqlx::Connection;

/// The URL of a new, empty database (`ghlflow_t_<pid>_<n>`), or None (after a notice) when
/// no cluster is configured.
pub async fn fresh_postgres_url() -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = match std::env::var("GHLFLOW_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("GHLFLOW_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "GHLFLOW_REQUIRE_POSTGRES=1 but GHLFLOW_TEST_POSTGRES is not set (eval \"$(.ci/postgres.sh)\" starts a cluster)"
            );
            eprintln!(
                "skipped: GHLFLOW_TEST_POSTGRES is not set (eval \"$(.ci/postgres.sh)\" starts a throwaway cluster)"
            );
            return None;
        }
    };
    let name = format!("ghlflow_t_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("the GHLFLOW_TEST_POSTGRES cluster answers");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("a test database is created");
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).expect("GHLFLOW_TEST_POSTGRES is a URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// A store on a fresh database, or None (skipped).
pub async fn store() -> Option<PgStore> {
    let url = fresh_postgres_url().await?;
    Some(PgStore::connect(&url).await.expect("the store connects to a fresh database"))
}

/// Three workers (each its own connect) on one fresh database, or None (skipped).
pub async fn workers() -> Option<[PgStore; 3]> {
    let url = fresh_postgres_url().await?;
    let connect = || async { PgStore::connect(&url).await.expect("a worker connects") };
    Some([connect().await, connect().await, connect().await])
}
