//! Planning cost of a 500-file sqlx folder: `load` (reading and parsing the files) alone,
//! and, with `ROLLBACK_TEST_PG_URL` set, `load` + `pending` (one ledger round trip) +
//! `plan` (scanning every file for transaction control and the tables it touches, and
//! building the plan with its covering checkpoints). Target: under 100 ms.
//!
//! `cargo bench -p benches --bench migrations`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use rollback_postgres::{quote_ident, Database, Migrations};

fn folder(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("00000_base.sql"),
        "CREATE TABLE t0 (id bigint PRIMARY KEY, v text);\n",
    )
    .unwrap();
    for i in 1..n {
        let body = match i % 5 {
            0 => format!("BEGIN;\nCREATE TABLE t{i} (id bigint PRIMARY KEY, v text);\nCOMMIT;\n"),
            1 => format!("ALTER TABLE t0 ADD COLUMN c{i} text;\nUPDATE t0 SET c{i} = v;\n"),
            2 => format!("CREATE INDEX i{i} ON t0 (v);\n"),
            3 => {
                format!("-- a comment with 'quotes'\nINSERT INTO t0 (id, v) VALUES ({i}, 'x;y');\n")
            }
            _ => format!("COMMENT ON TABLE t0 IS $$migration {i}$$;\n"),
        };
        std::fs::write(dir.path().join(format!("{i:05}_m{i}.sql")), body).unwrap();
    }
    dir
}

fn planning(c: &mut Criterion) {
    let dir = folder(500);
    c.bench_function("migrations/load_500_sqlx_files", |b| {
        b.iter(|| Migrations::sqlx(dir.path()).unwrap().all().len())
    });
    let Ok(url) = std::env::var("ROLLBACK_TEST_PG_URL") else {
        eprintln!("ROLLBACK_TEST_PG_URL is not set: pending + plan not measured");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = Database::connect(&url).unwrap();
    let schema = format!(
        "bench_mig_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    rt.block_on(async {
        let c = db.client().await.unwrap();
        c.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(&schema)))
            .await
            .unwrap();
    });
    c.bench_function("migrations/pending_and_plan_500_sqlx_files", |b| {
        b.iter(|| {
            rt.block_on(async {
                let p = Migrations::sqlx(dir.path())
                    .unwrap()
                    .ledger_schema(&schema)
                    .pending(&db)
                    .await
                    .unwrap();
                p.plan().unwrap().steps().len()
            })
        })
    });
    rt.block_on(async {
        let c = db.client().await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    });
}

criterion_group!(benches, planning);
criterion_main!(benches);
