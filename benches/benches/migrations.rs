//! Planning cost of a 500-file folder in every format (sqlx, golang-migrate, dbmate,
//! diesel, refinery, Flyway, sqitch): `load` (reading and parsing the files, checksums
//! included) alone, and, with `ROLLBACK_TEST_PG_URL` set, `load` + `pending` (one ledger
//! round trip) + `plan` (scanning every file for transaction control and the tables it
//! touches, and building the plan with its covering checkpoints). Target: under 100 ms.
//!
//! `cargo bench -p benches --bench migrations`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use rollback_postgres::{quote_ident, Database, Format, Migrations};
use std::path::Path;
use std::time::Duration;

const FORMATS: [Format; 7] = [
    Format::Sqlx,
    Format::GolangMigrate,
    Format::Dbmate,
    Format::Diesel,
    Format::Refinery,
    Format::Flyway,
    Format::Sqitch,
];

/// The body of migration `i` (0: the base table).
fn body(i: usize) -> String {
    match (i, i % 5) {
        (0, _) => "CREATE TABLE t0 (id bigint PRIMARY KEY, v text);\n".into(),
        (_, 0) => format!("BEGIN;\nCREATE TABLE t{i} (id bigint PRIMARY KEY, v text);\nCOMMIT;\n"),
        (_, 1) => format!("ALTER TABLE t0 ADD COLUMN c{i} text;\nUPDATE t0 SET c{i} = v;\n"),
        (_, 2) => format!("CREATE INDEX i{i} ON t0 (v);\n"),
        (_, 3) => {
            format!("-- a comment with 'quotes'\nINSERT INTO t0 (id, v) VALUES ({i}, 'x;y');\n")
        }
        _ => format!("COMMENT ON TABLE t0 IS $$migration {i}$$;\n"),
    }
}

/// A down for every other migration (formats with downs).
fn down(i: usize) -> Option<String> {
    match i % 5 {
        1 if i % 2 == 1 => Some(format!("ALTER TABLE t0 DROP COLUMN c{i};\n")),
        2 if i % 2 == 1 => Some(format!("DROP INDEX i{i};\n")),
        _ => None,
    }
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn folder(format: Format, n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut plan = String::from("%syntax-version=1.0.0\n%project=bench\n\n");
    for i in 0..n {
        let (up, down) = (body(i), down(i));
        match format {
            Format::Sqlx => write(&d.join(format!("{i:05}_m{i}.sql")), &up),
            Format::GolangMigrate => {
                write(&d.join(format!("{i:05}_m{i}.up.sql")), &up);
                if let Some(dn) = &down {
                    write(&d.join(format!("{i:05}_m{i}.down.sql")), dn);
                }
            }
            Format::Dbmate => write(
                &d.join(format!("{i:05}_m{i}.sql")),
                &format!(
                    "-- migrate:up\n{up}\n-- migrate:down\n{}",
                    down.unwrap_or_default()
                ),
            ),
            Format::Diesel => {
                write(&d.join(format!("{i:05}_m{i}/up.sql")), &up);
                write(
                    &d.join(format!("{i:05}_m{i}/down.sql")),
                    &down.unwrap_or_default(),
                );
            }
            Format::Refinery | Format::Flyway => {
                write(&d.join(format!("V{}__m{i}.sql", i + 1)), &up)
            }
            Format::Sqitch => {
                write(&d.join(format!("deploy/m{i}.sql")), &up);
                if let Some(dn) = &down {
                    write(&d.join(format!("revert/m{i}.sql")), dn);
                }
                let dep = if i > 0 { "[m0] " } else { "" };
                plan.push_str(&format!(
                    "m{i} {dep}2024-01-01T00:00:00Z Bench <bench@example.com> # migration {i}\n"
                ));
            }
            _ => unreachable!("a format this bench does not write"),
        }
    }
    if format == Format::Sqitch {
        write(&d.join("sqitch.plan"), &plan);
    }
    dir
}

fn planning(c: &mut Criterion) {
    let folders: Vec<(Format, tempfile::TempDir)> =
        FORMATS.iter().map(|&f| (f, folder(f, 500))).collect();
    for (f, dir) in &folders {
        c.bench_function(&format!("migrations/load_500_{}_files", f.tool()), |b| {
            b.iter(|| Migrations::load(*f, dir.path()).unwrap().all().len())
        });
    }
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
    let mut group = c.benchmark_group("migrations");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (f, dir) in &folders {
        group.bench_function(format!("pending_and_plan_500_{}_files", f.tool()), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let p = Migrations::load(*f, dir.path())
                        .unwrap()
                        .ledger_schema(&schema)
                        .pending(&db)
                        .await
                        .unwrap();
                    p.plan().unwrap().steps().len()
                })
            })
        });
    }
    group.finish();
    rt.block_on(async {
        let c = db.client().await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    });
}

criterion_group!(benches, planning);
criterion_main!(benches);
