//! Connection strings and passwords never appear in logs, errors, Debug output or reports.

mod common;

use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Executor, Plan};
use rollback_postgres::{Database, PgJournal, SqlStep, Table, TableSnapshot};
use std::io::Write;
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "Sup3r-S3cret-Pa55word";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `url` with its port replaced (whatever port the test server listens on).
fn with_port(url: &str, port: u16) -> String {
    let host_start = url.rfind('@').map_or(0, |i| i + 1);
    let path_start = url[host_start..]
        .find('/')
        .map_or(url.len(), |i| host_start + i);
    match url[host_start..path_start].rfind(':') {
        Some(colon) => format!(
            "{}:{port}{}",
            &url[..host_start + colon],
            &url[path_start..]
        ),
        None => url.to_string(),
    }
}

fn with_password(url: &str) -> String {
    // postgres://user@host... -> postgres://user:PASSWORD@host... (trust auth ignores it)
    url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

#[tokio::test]
async fn passwords_and_connection_strings_never_reach_logs_errors_or_reports() {
    let test = TestDb::new("secrets").await;
    test.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1);")
        .await;
    let url = with_password(&test.url);
    assert!(url.contains(PASSWORD), "test setup: {url}");
    let logs = Buf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = Database::connect(&url).unwrap();
    let mut seen = vec![format!("{db:?}"), db.to_string()];
    // A run that fails and rolls back, journaled in PostgreSQL.
    let plan = Plan::builder("secrets")
        .checkpoint("db", TableSnapshot::new(&db, Table::public("t")))
        .step(
            "db",
            SqlStep::new(&db, "ok", "UPDATE t SET v = 2").down("UPDATE t SET v = 1"),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&db, "bad", "SELECT no_such_column FROM t").down("SELECT 1"),
            &["ok"],
        )
        .build()
        .unwrap();
    let report = Executor::new(PgJournal::new(&db)).run(&plan).await.unwrap();
    seen.push(report.to_json());
    seen.push(report.to_markdown());
    seen.push(format!("{plan:?}"));
    // Errors: unreachable server, bad connection string, failing SQL.
    let closed = with_port(&url, 1);
    assert_ne!(closed, url, "test setup: no port to replace in the URL");
    let dead = Database::connect(&closed).unwrap();
    let err = TableSnapshot::new(&dead, Table::public("t"))
        .fingerprint(&Context::detached())
        .await
        .unwrap_err();
    seen.push(err.to_string());
    seen.push(format!("{err:?}"));
    let bad =
        Database::connect(&format!("postgres://u:{PASSWORD}@127.0.0.1:notaport/db")).unwrap_err();
    seen.push(bad.to_string());
    seen.push(format!("{bad:?}"));
    let exec = Executor::new(MemoryJournal::new());
    seen.push(format!("{exec:?}"));
    drop(_guard);
    seen.push(String::from_utf8(logs.0.lock().unwrap().clone()).unwrap());
    assert!(
        seen.last().unwrap().contains("rollback"),
        "logs were captured"
    );
    for s in &seen {
        assert!(!s.contains(PASSWORD), "password leaked: {s}");
        assert!(!s.contains(&url), "connection string leaked: {s}");
        assert!(!s.contains(&closed), "connection string leaked: {s}");
    }
}
