//! S3 manifest checkpoints, versioned against copy-based, with request counts (section
//! 5); and the peak memory of checkpointing 100k objects (section 6).

use crate::servers::S3Env;
use crate::{on_exit, run_child, secs, Args, Cleanup, Res};
use benches::{fmt_bytes, fmt_count, fmt_ratio, fmt_secs, Report, Row};
use futures::{StreamExt, TryStreamExt};
use rollback_core::{Checkpoint, Context, Snapshot};
use rollback_s3::{CheckpointMode, RequestCounter, S3Bucket, S3Checkpoint};
use std::collections::BTreeMap;
use std::time::Instant;

/// Objects changed before a restore.
const CHANGES: u64 = 100;

fn bucket_name(tag: &str) -> String {
    format!(
        "rb-bench-{}-{tag}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn key(i: u64) -> String {
    format!("data/{:03}/{i:08}.bin", i % 997)
}

fn body(i: u64, len: usize, gen: u8) -> Vec<u8> {
    let mut v = format!("object {i} generation {gen} ").into_bytes();
    v.resize(len.max(v.len()), b'.');
    v
}

/// Put `n` objects of `len` bytes with `conc` requests in flight.
async fn populate(b: &S3Bucket, n: u64, len: usize, conc: usize) -> Res<f64> {
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| async move { b.put(&key(i), body(i, len, 0)).await.map(|_| ()) })
        .buffer_unordered(conc)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(secs(t))
}

/// Change `CHANGES` objects: 80 % overwritten, 10 % deleted, 10 % new keys.
async fn change(b: &S3Bucket, n: u64, gen: u8) -> Res<()> {
    let c = CHANGES.min(n / 2).max(3);
    let (over, del) = (c * 8 / 10, c / 10);
    let add = c - over - del;
    let stride = (n / c).max(1);
    let mut ops = Vec::new();
    for j in 0..over {
        ops.push((key(j * stride), Some(body(j * stride, 1024, gen))));
    }
    for j in over..over + del {
        ops.push((key(j * stride), None));
    }
    for j in 0..add {
        ops.push((key(n + j), Some(body(n + j, 1024, gen))));
    }
    futures::stream::iter(ops)
        .map(|(k, v)| async move {
            match v {
                Some(v) => b.put(&k, v).await.map(|_| ()),
                None => b.delete(&k).await,
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn is_write(op: &str) -> bool {
    matches!(
        op,
        "CopyObject" | "PutObject" | "DeleteObject" | "DeleteObjects"
    )
}

#[derive(Debug, Clone, Default)]
struct Count {
    secs: f64,
    ops: BTreeMap<String, u64>,
}

impl Count {
    fn writes(&self) -> u64 {
        self.ops
            .iter()
            .filter(|(k, _)| is_write(k))
            .map(|(_, v)| v)
            .sum()
    }
    fn reads(&self) -> u64 {
        self.ops
            .iter()
            .filter(|(k, _)| !is_write(k))
            .map(|(_, v)| v)
            .sum()
    }
    fn short(&self) -> String {
        let n = |k: u64, what: &str| {
            format!("{} {what}{}", fmt_count(k), if k == 1 { "" } else { "s" })
        };
        format!(
            "{}; {} + {}",
            fmt_secs(self.secs),
            n(self.writes(), "write"),
            n(self.reads(), "read")
        )
    }
    fn ops_text(&self) -> String {
        self.ops
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn counted<T>(
    counter: &RequestCounter,
    f: impl std::future::Future<Output = rollback_core::Result<T>>,
) -> Res<(T, Count)> {
    counter.reset();
    let t = Instant::now();
    let v = f.await?;
    Ok((
        v,
        Count {
            secs: secs(t),
            ops: counter.by_operation(),
        },
    ))
}

struct ModeResult {
    capture: Count,
    restore: Count,
    noop: Count,
    parity: bool,
    method: String,
    changed: Option<u64>,
}

async fn one_mode(env: &S3Env, n: u64, mode: CheckpointMode, tag: &str) -> Res<(ModeResult, f64)> {
    let name = bucket_name(tag);
    let settings = env.settings();
    let plain = S3Bucket::connect(&settings, &name);
    plain.create(mode == CheckpointMode::Versions).await?;
    on_exit(Cleanup::Bucket(env.clone(), name.clone()));
    let fill = populate(&plain, n, 1024, 32).await?;
    let counter = RequestCounter::new();
    let bucket = S3Bucket::connect_counted(&settings, &name, &counter);
    let cp = S3Checkpoint::new(&bucket, "").mode(mode);
    let ctx = Context::detached();
    let (snap, capture) = counted(&counter, cp.capture(&ctx)).await?;
    change(&plain, n, 1).await?;
    let (restored, restore) = counted(&counter, cp.restore(&snap, &ctx)).await?;
    let mut parity = cp.fingerprint(&ctx).await? == snap.fingerprint;
    let (_, noop) = counted(&counter, cp.restore(&snap, &ctx)).await?;
    parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
    cp.discard(&snap, &ctx).await?;
    Ok((
        ModeResult {
            capture,
            restore,
            noop,
            parity,
            method: restored.method,
            changed: restored.items_changed,
        },
        fill,
    ))
}

pub(crate) async fn s3(env: &S3Env, args: &Args) -> Res<Report> {
    let n = ((10_000.0 * args.s3_scale()).round() as u64).max(200);
    let (v, fill_v) = one_mode(env, n, CheckpointMode::Versions, "v").await?;
    let (c, fill_c) = one_mode(env, n, CheckpointMode::Copy, "c").await?;
    let changes = CHANGES.min(n / 2).max(3);
    let mut r = Report::default();
    let objs = fmt_count(n);
    r.push(
        Row::new(
            "5. S3 checkpoint",
            format!("capture of {objs} objects (1 KiB each)"),
        )
        .rollback(format!("versioned: {}", v.capture.short()))
        .reference(format!("copy-based: {}", c.capture.short()))
        .ratio(format!(
            "{} faster versioned",
            fmt_ratio(c.capture.secs / v.capture.secs)
        )),
    );
    let per = |m: &ModeResult| m.restore.writes() as f64 / changes as f64;
    let scales = per(&v) <= 2.0 && per(&c) <= 2.0;
    r.push(
        Row::new(
            "5. S3 restore",
            format!("after changing {changes} of {objs} objects (80% overwritten, 10% deleted, 10% added)"),
        )
        .rollback(format!("versioned: {}", v.restore.short()))
        .reference(format!("copy-based: {}", c.restore.short()))
        .ratio(format!(
            "{:.2} / {:.2} writes per changed object",
            per(&v),
            per(&c)
        ))
        .target("writes scale with the changes, not the objects", Some(scales)),
    );
    r.push(
        Row::new(
            "",
            "restore with nothing changed (reads only: listing + manifest)",
        )
        .rollback(format!("versioned: {}", v.noop.short()))
        .reference(format!("copy-based: {}", c.noop.short())),
    );
    for (name, m) in [("versioned", &v), ("copy-based", &c)] {
        r.note(format!(
            "S3 {name}: capture [{}]; restore ({} method, {} items changed) [{}]; no-change restore [{}]; fingerprint equals the snapshot's after each restore: {}",
            m.capture.ops_text(),
            m.method,
            m.changed.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
            m.restore.ops_text(),
            m.noop.ops_text(),
            if m.parity { "yes" } else { "**no**" }
        ));
    }
    r.note(format!(
        "S3 setup (not compared): putting {objs} objects took {} (versioned bucket) and {} (plain bucket) at 32 in flight",
        fmt_secs(fill_v),
        fmt_secs(fill_c)
    ));
    Ok(r)
}

pub(crate) async fn delete_bucket(env: &S3Env, name: &str) -> Res<()> {
    S3Bucket::connect(&env.settings(), name)
        .concurrency(32)
        .dangerous_delete_bucket()
        .await?;
    Ok(())
}

/// Peak RSS of checkpointing 100k × scale objects (versioned) and of restoring after
/// changes, each in a child process (section 6).
pub(crate) async fn memory(env: &S3Env, args: &Args) -> Res<Report> {
    let n = args
        .memory_objects
        .unwrap_or(((100_000.0 * args.s3_scale()).round() as u64).max(1000));
    let name = bucket_name("m");
    let plain = S3Bucket::connect(&env.settings(), &name);
    plain.create(true).await?;
    on_exit(Cleanup::Bucket(env.clone(), name.clone()));
    let fill = populate(&plain, n, 64, 64).await?;
    eprintln!(
        "compare: {} objects put in {}",
        fmt_count(n),
        fmt_secs(fill)
    );
    let dir = tempfile::tempdir()?;
    let snap_path = dir.path().join("snapshot.json");
    let vars = env.vars();
    let idle = run_child(&["idle".into()], &[]).await?;
    let cap = run_child(
        &[
            "s3-capture".into(),
            name.clone(),
            snap_path.to_string_lossy().into(),
        ],
        &vars,
    )
    .await?;
    change(&plain, n, 1).await?;
    let res = run_child(
        &[
            "s3-restore".into(),
            name.clone(),
            snap_path.to_string_lossy().into(),
        ],
        &vars,
    )
    .await?;
    let kib = |v: &serde_json::Value| v["peak_rss_kib"].as_u64().unwrap_or(0) * 1024;
    let s = |v: &serde_json::Value| fmt_secs(v["secs"].as_f64().unwrap_or(f64::NAN));
    let mut r = Report::default();
    let limit = 100 * 1024 * 1024;
    r.push(
        Row::new(
            "6. peak memory",
            format!(
                "S3 checkpoint capture of {} objects (versioned)",
                fmt_count(n)
            ),
        )
        .rollback(format!("{} ({})", fmt_bytes(kib(&cap)), s(&cap)))
        .reference(format!("idle process: {}", fmt_bytes(kib(&idle))))
        .target("< 100 MiB", Some(kib(&cap) < limit)),
    );
    r.push(
        Row::new(
            "",
            format!(
                "S3 restore of those {} objects after {CHANGES} changes",
                fmt_count(n)
            ),
        )
        .rollback(format!("{} ({})", fmt_bytes(kib(&res)), s(&res)))
        .reference(format!("idle process: {}", fmt_bytes(kib(&idle))))
        .target("< 100 MiB", Some(kib(&res) < limit)),
    );
    r.note(format!(
        "memory: S3 restore child reported {}",
        res["detail"]
    ));
    Ok(r)
}

fn child_bucket(name: &str) -> Res<S3Bucket> {
    let env = S3Env::from_env().ok_or("ROLLBACK_TEST_S3_ENDPOINT is unset")?;
    Ok(S3Bucket::connect(&env.settings(), name))
}

/// Child: capture a versioned checkpoint of bucket `a[0]`, write the snapshot to `a[1]`.
pub(crate) async fn child_capture(a: &[String]) -> Res<serde_json::Value> {
    let [name, out] = a else {
        return Err("usage: child s3-capture BUCKET SNAPSHOT_FILE".into());
    };
    let cp = S3Checkpoint::new(&child_bucket(name)?, "").mode(CheckpointMode::Versions);
    let snap = cp.capture(&Context::detached()).await?;
    std::fs::write(out, serde_json::to_vec(&snap)?)?;
    Ok(serde_json::json!({ "objects": snap.descriptor["entries"] }))
}

/// Child: restore bucket `a[0]` to the snapshot in file `a[1]`, then discard it.
pub(crate) async fn child_restore(a: &[String]) -> Res<serde_json::Value> {
    let [name, file] = a else {
        return Err("usage: child s3-restore BUCKET SNAPSHOT_FILE".into());
    };
    let snap: Snapshot = serde_json::from_slice(&std::fs::read(file)?)?;
    let cp = S3Checkpoint::new(&child_bucket(name)?, "").mode(CheckpointMode::Versions);
    let ctx = Context::detached();
    let restored = cp.restore(&snap, &ctx).await?;
    let parity = cp.fingerprint(&ctx).await? == snap.fingerprint;
    let peak = benches::peak_rss_kib();
    cp.discard(&snap, &ctx).await?;
    Ok(serde_json::json!({
        "method": restored.method,
        "changed": restored.items_changed,
        "parity": parity,
        "peak_before_discard_kib": peak,
    }))
}
