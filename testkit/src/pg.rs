//! A fresh database per test on the server of `ROLLBACK_TEST_PG_URL`, login roles, and
//! `pg_dump` views that compare equal when the data is the same.

use rollback_postgres::Database;
use std::process::Command;

/// The server URL of the test cluster (panics with a clear message when unset).
pub fn server_url() -> String {
    std::env::var("ROLLBACK_TEST_PG_URL").expect(
        "ROLLBACK_TEST_PG_URL is not set: run the tests through scripts/test, which starts a \
         throwaway PostgreSQL and exports it (or `source /tmp/rollback-test-env.sh`)",
    )
}

/// Directory of the PostgreSQL client binaries (pg_dump, pgbench…).
pub fn pg_bin(name: &str) -> String {
    let dir = std::env::var("ROLLBACK_PG_BIN").expect(
        "ROLLBACK_PG_BIN is not set: run the tests through scripts/test (it exports the \
         PostgreSQL binaries' folder)",
    );
    format!("{dir}/{name}")
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

async fn admin() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// A fresh database, dropped when this is dropped.
pub struct TestDb {
    /// The database's name (unique per test).
    pub name: String,
    /// A connection string for it (the test server's superuser).
    pub url: String,
    /// The library's pool on it.
    pub db: Database,
}

impl TestDb {
    /// Create a database named after `label` and a random suffix.
    pub async fn new(label: &str) -> TestDb {
        let name = format!(
            "rbt_{}_{}",
            label.chars().take(30).collect::<String>(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        let url = with_database(&server_url(), &name);
        let db = Database::connect(&url).expect("pool");
        TestDb { name, url, db }
    }

    /// Run SQL (panics on error).
    pub async fn exec(&self, sql: &str) {
        let c = self.db.client().await.expect("client");
        c.batch_execute(sql).await.unwrap_or_else(|e| {
            panic!(
                "{sql}: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or(e.to_string())
            )
        });
    }

    /// One value of the first row and column, as text.
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        let c = self.db.client().await.expect("client");
        let rows = c.simple_query(sql).await.expect(sql);
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return r.get(0).map(|s| s.to_string());
            }
        }
        None
    }

    /// The first column of the first row as a number (`-1` when it is not one).
    pub async fn count(&self, sql: &str) -> i64 {
        self.scalar(sql)
            .await
            .unwrap_or_default()
            .parse()
            .unwrap_or(-1)
    }

    /// `pg_dump` of schema and of data, made comparable (see [`dump`]).
    pub fn dump(&self) -> (String, String) {
        dump(&self.url)
    }

    /// Drop the database now (at the end of an `async` test, before the runtime goes).
    pub async fn drop_now(self) {}

    /// A fresh database whose sessions start with `settings` (each `name = value`, set
    /// with `ALTER DATABASE … SET` before any connection is made), as a customer may have
    /// configured it.
    pub async fn with_settings(label: &str, settings: &[&str]) -> TestDb {
        let db = Self::new(label).await;
        let a = admin().await;
        for s in settings {
            a.batch_execute(&format!("ALTER DATABASE \"{}\" SET {s}", db.name))
                .await
                .unwrap_or_else(|e| panic!("ALTER DATABASE SET {s}: {e}"));
        }
        db
    }

    /// A superuser session of its own on this database with the server's default
    /// settings pinned (whatever the database's defaults are), for setup and for checks
    /// independent of the library.
    pub async fn checker(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        c.batch_execute(
            "SET standard_conforming_strings = on; SET check_function_bodies = on; \
             SET escape_string_warning = on; SET search_path = public; \
             SET session_replication_role = origin",
        )
        .await
        .expect("pin the checker's settings");
        c
    }

    /// A connection string for `user` on this database (the test server trusts local
    /// connections).
    pub fn url_as(&self, user: &str) -> String {
        let scheme_end = self.url.find("://").map(|i| i + 3).unwrap_or(0);
        match self.url[scheme_end..].find('@') {
            Some(at) => format!(
                "{}{user}{}",
                &self.url[..scheme_end],
                &self.url[scheme_end + at..]
            ),
            None => format!(
                "{}{user}@{}",
                &self.url[..scheme_end],
                &self.url[scheme_end..]
            ),
        }
    }
}

/// A login role created for one test (roles are cluster-wide: the name is unique), dropped
/// when this is dropped. Declare it before the [`TestDb`] whose objects it owns, so that
/// the database is dropped first.
pub struct TestRole {
    /// The role's name (unique per test).
    pub name: String,
}

impl TestRole {
    /// `CREATE ROLE <unique name> LOGIN <attributes>`.
    pub async fn new(label: &str, attributes: &str) -> TestRole {
        let name = format!(
            "rbr_{}_{}",
            label.chars().take(20).collect::<String>(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        admin()
            .await
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN {attributes}"))
            .await
            .expect("create test role");
        TestRole { name }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        admin_from_drop(format!("DROP ROLE IF EXISTS \"{}\"", self.name));
    }
}

/// `pg_dump` of schema and of data, made comparable: the schema as is, the data with
/// the lines of each COPY block sorted. The bookkeeping schemas are left out.
pub fn dump(url: &str) -> (String, String) {
    let run = |args: &[&str]| -> String {
        let out = Command::new(pg_bin("pg_dump"))
            .args(args)
            .args(["-N", "_rollback", "-N", "_rollback_snapshots", "--no-owner"])
            .arg("-d")
            .arg(url)
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 dump")
    };
    let schema = strip_restrict(&run(&["--schema-only"]));
    let data = strip_restrict(&run(&["--data-only"]));
    (schema, sort_copy_blocks(&data))
}

/// Drop pg_dump's `\restrict <random key>` / `\unrestrict` lines (a fresh key per dump).
pub fn strip_restrict(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Assert two dumps are equal, printing only the lines that differ.
#[track_caller]
pub fn assert_same_dump(before: &(String, String), after: &(String, String), what: &str) {
    for (kind, a, b) in [
        ("schema", &before.0, &after.0),
        ("data", &before.1, &after.1),
    ] {
        if a != b {
            let la: Vec<&str> = a.lines().collect();
            let lb: Vec<&str> = b.lines().collect();
            let only_a: Vec<&&str> = la.iter().filter(|l| !lb.contains(l)).take(20).collect();
            let only_b: Vec<&&str> = lb.iter().filter(|l| !la.contains(l)).take(20).collect();
            panic!(
                "{what}: pg_dump {kind} differs ({} vs {} lines)\nonly before: {only_a:#?}\nonly after: {only_b:#?}",
                la.len(),
                lb.len()
            );
        }
    }
}

/// Sort the rows of every COPY block of a data dump (pg_dump writes them in physical
/// order, which a restore legitimately changes).
pub fn sort_copy_blocks(dump: &str) -> String {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut in_copy = false;
    for line in dump.lines() {
        if in_copy {
            if line == "\\." {
                block.sort_unstable();
                out.append(&mut block);
                out.push(line);
                in_copy = false;
            } else {
                block.push(line);
            }
        } else {
            if line.starts_with("COPY ") {
                in_copy = true;
            }
            out.push(line);
        }
    }
    out.join("\n")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_from_drop(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

/// Run `sql` on the server from a `Drop` (which may run inside or outside a runtime): on
/// a thread of its own with a runtime of its own; errors are ignored (cleanup).
fn admin_from_drop(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            if let Ok((c, conn)) =
                tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let _ = c.batch_execute(&sql).await;
            }
        });
    })
    .join();
}
