//! Measures, on a fresh `pgbench -i -s N` database (default N = 10: 1M accounts):
//!
//! - fingerprint throughput of `pgbench_accounts` against raw `COPY … TO STDOUT` of the
//!   same table (text, and binary in key order — what the fingerprint streams), read and
//!   discarded by the same client in the same run;
//! - capture and restore time of a [`TableSnapshot`] (swap, copy, merge) against
//!   `pg_dump -Fc -t pgbench_accounts` and `pg_restore --clean` of the same table.
//!
//! ```text
//! source /tmp/rollback-test-env.sh
//! cargo run --release -p rollback-postgres --example pg_bench -- [scale]
//! ```
//! Needs `ROLLBACK_TEST_PG_URL` (a superuser on a throwaway server) and `ROLLBACK_PG_BIN`.

use futures::StreamExt;
use rollback_core::{Checkpoint, Context};
use rollback_postgres::{Database, RestoreMethod, Table, TableSnapshot};
use rollback_testkit::pg::with_database;
use std::process::Command;
use std::time::{Duration, Instant};

fn best<T>(mut v: Vec<(Duration, T)>) -> (Duration, T) {
    v.sort_by_key(|x| x.0);
    v.remove(0)
}

async fn copy_out(c: &tokio_postgres::Client, sql: &str) -> (Duration, u64) {
    let t = Instant::now();
    let s = c.copy_out(sql).await.expect("copy");
    futures::pin_mut!(s);
    let mut bytes = 0u64;
    while let Some(chunk) = s.next().await {
        bytes += chunk.expect("copy chunk").len() as u64;
    }
    (t.elapsed(), bytes)
}

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let scale: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let server = std::env::var("ROLLBACK_TEST_PG_URL")
        .expect("ROLLBACK_TEST_PG_URL is not set: source /tmp/rollback-test-env.sh (scripts/test)");
    let bin = std::env::var("ROLLBACK_PG_BIN").expect("ROLLBACK_PG_BIN is not set");
    let name = format!(
        "rbbench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (admin, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let init = run(Command::new(format!("{bin}/pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(&url));
    println!("pgbench -i -s {scale}: {init:.2?}");
    let db = Database::connect(&url).unwrap();
    let c = db.dedicated().await.unwrap();
    c.batch_execute("VACUUM ANALYZE pgbench_accounts")
        .await
        .unwrap();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    let table = Table::public("pgbench_accounts");
    let cp = TableSnapshot::new(&db, table.clone());
    let cp1 = TableSnapshot::new(&db, table.clone()).fingerprint_parallelism(1);
    let ctx = Context::detached();
    // Warm the cache.
    let _ = copy_out(&c, "COPY pgbench_accounts TO STDOUT").await;
    let mut text = Vec::new();
    let mut binary = Vec::new();
    let mut fp = Vec::new();
    let mut fp1 = Vec::new();
    for _ in 0..5 {
        text.push(copy_out(&c, "COPY pgbench_accounts TO STDOUT").await);
        binary.push(
            copy_out(
                &c,
                "COPY (SELECT * FROM pgbench_accounts ORDER BY aid) TO STDOUT (FORMAT binary)",
            )
            .await,
        );
        let t = Instant::now();
        let d = cp.fingerprint(&ctx).await.unwrap();
        fp.push((t.elapsed(), d));
        let t = Instant::now();
        let d1 = cp1.fingerprint(&ctx).await.unwrap();
        fp1.push((t.elapsed(), d1));
        assert_eq!(d, d1, "parallel and single-pass fingerprints agree");
    }
    let (t_text, b_text) = best(text);
    let (t_bin, b_bin) = best(binary);
    let (t_fp, _) = best(fp);
    let (t_fp1, _) = best(fp1);
    let mb = |b: u64, t: Duration| b as f64 / 1e6 / t.as_secs_f64();
    let rps = |t: Duration| rows as f64 / t.as_secs_f64() / 1e6;
    println!("\n## Fingerprint vs COPY ({rows} rows, best of 5, interleaved)\n");
    println!("| what | time | rows/s | MB/s | vs COPY text |");
    println!("|---|---|---|---|---|");
    println!(
        "| COPY pgbench_accounts TO STDOUT (text) | {t_text:.2?} | {:.2}M | {:.0} | 1.00× |",
        rps(t_text),
        mb(b_text, t_text)
    );
    println!(
        "| COPY (SELECT … ORDER BY aid) TO STDOUT (binary) | {t_bin:.2?} | {:.2}M | {:.0} | {:.2}× |",
        rps(t_bin),
        mb(b_bin, t_bin),
        t_text.as_secs_f64() / t_bin.as_secs_f64()
    );
    println!(
        "| TableSnapshot::fingerprint, 1 session (catalog + binary COPY + blake3) | {t_fp1:.2?} | {:.2}M | {:.0} | {:.2}× |",
        rps(t_fp1),
        mb(b_bin, t_fp1),
        t_text.as_secs_f64() / t_fp1.as_secs_f64()
    );
    println!(
        "| TableSnapshot::fingerprint, 2 sessions (default) | {t_fp:.2?} | {:.2}M | {:.0} | {:.2}× |",
        rps(t_fp),
        mb(b_bin, t_fp),
        t_text.as_secs_f64() / t_fp.as_secs_f64()
    );

    // Capture and restore vs pg_dump / pg_restore of the same table.
    let dump = std::env::temp_dir().join(format!("{name}.dump"));
    let t_dump = run(Command::new(format!("{bin}/pg_dump"))
        .args(["-Fc", "-t", "pgbench_accounts", "-f"])
        .arg(&dump)
        .arg(&url));
    let mutate = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0; \
                  DELETE FROM pgbench_accounts WHERE aid % 1000 = 1;";
    c.batch_execute(mutate).await.unwrap();
    let t_restore = run(Command::new(format!("{bin}/pg_restore"))
        .args(["--clean", "--if-exists", "-d"])
        .arg(&url)
        .arg(&dump));
    let _ = std::fs::remove_file(&dump);
    println!("\n## Capture and restore of pgbench_accounts ({rows} rows; restore after updating 10% and deleting 0.1% of the rows)\n");
    println!("| what | time |");
    println!("|---|---|");
    println!("| pg_dump -Fc -t pgbench_accounts | {t_dump:.2?} |");
    println!("| pg_restore --clean (same table) | {t_restore:.2?} |");
    for (method, keep) in [
        (RestoreMethod::Swap, true),
        (RestoreMethod::Swap, false),
        (RestoreMethod::Copy, true),
        (RestoreMethod::Merge, true),
    ] {
        let cp = TableSnapshot::new(&db, table.clone())
            .restore_method(method)
            .keep_snapshot_after_swap(keep);
        let t = Instant::now();
        let snap = cp.capture(&ctx).await.unwrap();
        let t_cap = t.elapsed();
        c.batch_execute(mutate).await.unwrap();
        let t = Instant::now();
        let how = cp.restore(&snap, &ctx).await.unwrap();
        let t_res = t.elapsed();
        let t = Instant::now();
        let ok = cp.fingerprint(&ctx).await.unwrap() == snap.fingerprint;
        let t_par = t.elapsed();
        assert!(ok, "parity after {method:?}");
        cp.discard(&snap, &ctx).await.unwrap();
        let label = match (method, keep) {
            (RestoreMethod::Swap, true) => "swap (keeping the snapshot: duplicates the copy first)",
            (RestoreMethod::Swap, false) => "swap, keep_snapshot_after_swap(false)",
            (RestoreMethod::Copy, _) => "copy (TRUNCATE + INSERT … SELECT)",
            _ => "merge (delete / update / insert by key)",
        };
        println!("| TableSnapshot capture | {t_cap:.2?} |");
        println!(
            "| TableSnapshot restore: {label}; digest check included; {} rows written ({}) | {t_res:.2?} |",
            how.items_changed.unwrap_or(0),
            how.method
        );
        println!("| parity check (fingerprint) after it | {t_par:.2?} |");
    }
    // How long the table is locked during a swap restore, measured from another session.
    let cp = TableSnapshot::new(&db, table.clone());
    let snap = cp.capture(&ctx).await.unwrap();
    c.batch_execute(mutate).await.unwrap();
    let probe_url = url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let probe = tokio::spawn(async move {
        let (p, conn) = tokio_postgres::connect(&probe_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut worst = Duration::ZERO;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            p.query_one("SELECT abalance FROM pgbench_accounts WHERE aid = 42", &[])
                .await
                .unwrap();
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst
    });
    let t = Instant::now();
    cp.restore(&snap, &ctx).await.unwrap();
    let t_res = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = probe.await.unwrap();
    println!(
        "| swap restore {t_res:.2?}: slowest point read by another session meanwhile | {worst:.2?} |"
    );
    drop(c);
    drop(db);
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}
