//! `compare`: rollback side by side with the physical limit and the tools teams use today,
//! measured in one run on the same machine, printed as a Markdown table of ratios.
//!
//! ```text
//! cargo run --release -p benches --bin compare -- [--scale N] [--only LIST] [--reps N] [--markdown FILE]
//!
//!   --scale N       1 = the issue's sizes: pgbench -s 50 (5M rows), 10,000 S3 objects,
//!                   10M rows and 100k objects for peak memory. 0.1 → 500k rows, 1,000 objects.
//!   --only LIST     comma-separated sections: fingerprint,diff,snapshot,executor,s3,memory
//!   --s3-scale N    scale of the S3 measurements alone (default: --scale): 10,000 × N
//!                   objects for the checkpoint comparison, 100,000 × N for peak memory
//!   --memory-objects N  objects for the S3 peak-memory measurement (default 100,000 ×
//!                   the S3 scale; moto lists versions in O(n) per page, so 100k is slow there)
//!   --reps N        repetitions of each timed measurement (median reported; default 3)
//!   --markdown [FILE] also write the table there; without FILE, to a dated file under
//!                   benches/results/ (`YYYY-MM-DD-HHMM-scale-N.md`), headed by the machine,
//!                   its cores, the load average at the start and the git commit
//! ```
//!
//! Servers: reuses those named by `ROLLBACK_TEST_PG_URL` / `ROLLBACK_PG_BIN` /
//! `ROLLBACK_TEST_S3_*` / `ROLLBACK_TEST_PG_TLS_URL` with `ROLLBACK_TEST_TLS_DIR` (e.g.
//! `source` the file written by `scripts/servers-up`), else starts a throwaway PostgreSQL,
//! moto and (for the fingerprint over TLS) a TLS-only PostgreSQL with
//! `scripts/lib/servers.sh` and stops them at the end. Everything it creates (a database, buckets) has a unique name and is dropped
//! at the end, also on Ctrl-C.
//!
//! Profiling: with `COMPARE_LOG_SQL=1` the bench database gets
//! `log_min_duration_statement = 0`, so the server log shows every statement's duration.
//!
//! Peak memory is measured per measurement in a child process (this binary run as
//! `compare child KIND ...`), reading `VmHWM` from `/proc/self/status`.

mod exec;
mod pg;
mod s3;
mod servers;

use benches::Report;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SECTIONS: [&str; 6] = [
    "fingerprint",
    "diff",
    "snapshot",
    "executor",
    "s3",
    "memory",
];

/// Command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) scale: f64,
    pub(crate) s3_scale: Option<f64>,
    pub(crate) memory_objects: Option<u64>,
    pub(crate) only: BTreeSet<String>,
    pub(crate) reps: usize,
    /// `Some(None)`: `--markdown` without a file (a dated file under `benches/results/`).
    pub(crate) markdown: Option<Option<PathBuf>>,
}

impl Args {
    fn parse(it: impl Iterator<Item = String>) -> Res<Self> {
        let mut it = it.peekable();
        let mut a = Args {
            scale: 1.0,
            s3_scale: None,
            memory_objects: None,
            only: SECTIONS.iter().map(|s| s.to_string()).collect(),
            reps: 3,
            markdown: None,
        };
        while let Some(arg) = it.next() {
            let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--scale" => a.scale = val("--scale")?.parse()?,
                "--s3-scale" => a.s3_scale = Some(val("--s3-scale")?.parse()?),
                "--memory-objects" => {
                    a.memory_objects = Some(val("--memory-objects")?.parse::<u64>()?.max(1))
                }
                "--reps" => a.reps = val("--reps")?.parse::<usize>()?.max(1),
                "--markdown" => {
                    a.markdown = Some(match it.peek() {
                        Some(v) if !v.starts_with("--") => it.next().map(PathBuf::from),
                        _ => None,
                    })
                }
                "--only" => {
                    a.only = val("--only")?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(bad) = a.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                        return Err(format!(
                            "unknown section {bad:?}; sections: {}",
                            SECTIONS.join(",")
                        )
                        .into());
                    }
                }
                "-h" | "--help" => {
                    println!("{}", USAGE);
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        if !(a.scale > 0.0 && a.scale.is_finite()) {
            return Err("--scale must be a positive number".into());
        }
        if a.s3_scale.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
            return Err("--s3-scale must be a positive number".into());
        }
        Ok(a)
    }

    /// The scale of the S3 measurements.
    pub(crate) fn s3_scale(&self) -> f64 {
        self.s3_scale.unwrap_or(self.scale)
    }

    pub(crate) fn wants(&self, s: &str) -> bool {
        self.only.contains(s)
    }
}

const USAGE: &str = "usage: compare [--scale N] [--s3-scale N] [--memory-objects N] [--only fingerprint,diff,snapshot,executor,s3,memory] [--reps N] [--markdown [FILE]]";

/// Something to remove at the end of the run.
#[derive(Debug, Clone)]
pub(crate) enum Cleanup {
    /// A PostgreSQL database (admin URL, name).
    Database(String, String),
    /// An S3 bucket, purged then deleted.
    Bucket(servers::S3Env, String),
}

static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());

/// Remember `c` for the end of the run.
pub(crate) fn on_exit(c: Cleanup) {
    if let Ok(mut v) = CLEANUPS.lock() {
        v.push(c);
    }
}

async fn run_cleanups() {
    let items: Vec<Cleanup> = CLEANUPS
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for c in items.into_iter().rev() {
        let r = match &c {
            Cleanup::Database(admin, name) => pg::drop_database(admin, name).await,
            Cleanup::Bucket(env, name) => s3::delete_bucket(env, name).await,
        };
        if let Err(e) = r {
            eprintln!("compare: cleanup of {c:?} failed: {e}");
        }
    }
}

/// Seconds since `t`.
pub(crate) fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("child") {
        argv.next();
        let rest: Vec<String> = argv.collect();
        std::process::exit(match child(&rest) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("compare child: {e}");
                1
            }
        });
    }
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let start = Start::now();
    let code = rt.block_on(async {
        let need_s3 = args.wants("s3") || args.wants("memory");
        let need_tls = args.wants("fingerprint");
        let needs_servers = SECTIONS.iter().any(|s| *s != "executor" && args.wants(s));
        let servers = if needs_servers {
            match tokio::task::spawn_blocking(move || servers::Servers::ensure(need_s3, need_tls))
                .await
            {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    eprintln!("compare: {e}");
                    return 1;
                }
                Err(e) => {
                    eprintln!("compare: {e}");
                    return 1;
                }
            }
        } else {
            None
        };
        let code = tokio::select! {
            r = run(&args, servers.as_ref()) => match r {
                Ok(report) => {
                    let md = render(&args, &start, &report).await;
                    println!("{md}");
                    if let Some(p) = &args.markdown {
                        let p = p.clone().unwrap_or_else(|| start.results_file(&args));
                        let written = p
                            .parent()
                            .map_or(Ok(()), std::fs::create_dir_all)
                            .and_then(|()| std::fs::write(&p, &md));
                        match written {
                            Ok(()) => eprintln!("compare: results written to {}", p.display()),
                            Err(e) => eprintln!("compare: writing {}: {e}", p.display()),
                        }
                    }
                    0
                }
                Err(e) => {
                    eprintln!("compare: {}", chain(&*e));
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("compare: interrupted; cleaning up");
                130
            }
        };
        run_cleanups().await;
        drop(servers);
        code
    });
    std::process::exit(code);
}

async fn run(args: &Args, servers: Option<&servers::Servers>) -> Res<Report> {
    let mut report = Report::default();
    let started = Instant::now();
    let mut pg_ctx = None;
    let pg_sections = ["fingerprint", "diff", "snapshot", "memory"];
    if let Some(sv) = servers {
        if pg_sections.iter().any(|s| args.wants(s)) {
            pg_ctx = Some(pg::Bench::setup(sv, args).await?);
        }
    }
    if let Some(b) = &pg_ctx {
        // Each section on both datasets: pgbench, then the realistic table.
        if args.wants("fingerprint") {
            for ds in &b.sets {
                section(&mut report, "fingerprint", b.fingerprint(args, ds)).await;
            }
        }
        if args.wants("diff") {
            for ds in &b.sets {
                section(&mut report, "diff", b.diff(args, ds)).await;
            }
        }
        if args.wants("snapshot") {
            for ds in &b.sets {
                section(&mut report, "snapshot", b.snapshot(args, ds)).await;
            }
        }
    }
    if args.wants("executor") {
        section(&mut report, "executor", exec::executor(args)).await;
    }
    if let Some(env) = servers.and_then(|s| s.s3.as_ref()) {
        if args.wants("s3") {
            section(&mut report, "s3", s3::s3(env, args)).await;
        }
    }
    if args.wants("memory") {
        if let (Some(b), Some(env)) = (&pg_ctx, servers.and_then(|s| s.s3.as_ref())) {
            section(&mut report, "memory", b.memory(args)).await;
            section(&mut report, "memory", s3::memory(env, args)).await;
        }
    }
    report.note(format!("whole run: {}", benches::fmt_secs(secs(started))));
    Ok(report)
}

async fn section(
    report: &mut Report,
    name: &str,
    f: impl std::future::Future<Output = Res<Report>>,
) {
    eprintln!("compare: == {name} ==");
    let t = Instant::now();
    match f.await {
        Ok(r) => {
            for row in &r.rows {
                eprintln!(
                    "compare:   {} | {} | {} | {} | {}",
                    row.measure, row.rollback, row.reference, row.ratio, row.target
                );
            }
            report.extend(r);
        }
        Err(e) => {
            let e = chain(&*e);
            eprintln!("compare: section {name} failed: {e}");
            report.push(benches::Row::new(name, "failed").rollback(e));
        }
    }
    eprintln!("compare: {name} took {}", benches::fmt_secs(secs(t)));
}

/// An error with its sources: `db error: relation "x" does not exist`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// What is known of the run when it starts: the time, the load and the code measured.
struct Start {
    /// `YYYY-MM-DD HH:MM UTC`.
    date: String,
    /// `YYYY-MM-DD-HHMM`, for the results file's name.
    stamp: String,
    /// `/proc/loadavg`'s three averages.
    load: String,
    /// `git describe`-like: the commit, `-dirty` when the tree has changes.
    commit: String,
}

impl Start {
    fn now() -> Self {
        let dir = env!("CARGO_MANIFEST_DIR");
        let commit = cmd_out("git", &["-C", dir, "rev-parse", "--short=12", "HEAD"]);
        let dirty = !cmd_out(
            "git",
            &["-C", dir, "status", "--porcelain", "--untracked-files=no"],
        )
        .is_empty();
        Start {
            date: cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            stamp: cmd_out("date", &["-u", "+%Y-%m-%d-%H%M"]),
            load: load_average(),
            commit: if commit.is_empty() {
                "unknown".into()
            } else if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            },
        }
    }

    /// `benches/results/<stamp>-scale-<scale>.md`.
    fn results_file(&self, args: &Args) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(format!("{}-scale-{}.md", self.stamp, args.scale))
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn render(args: &Args, start: &Start, report: &Report) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map(|kib| format!(", {} GiB of memory", kib / (1024 * 1024)))
        .unwrap_or_default();
    let cmd = format!(
        "compare --scale {}{}{} --reps {}",
        args.scale,
        args.s3_scale
            .map(|s| format!(" --s3-scale {s}"))
            .unwrap_or_default(),
        args.memory_objects
            .map(|s| format!(" --memory-objects {s}"))
            .unwrap_or_default(),
        args.reps
    );
    let only = if args.only.len() == SECTIONS.len() {
        String::new()
    } else {
        format!(
            " --only {}",
            args.only.iter().cloned().collect::<Vec<_>>().join(",")
        )
    };
    format!(
        "# `{cmd}{only}`, {}\n\n- machine: {cpu}, {cores} cores{mem}\n- load average at the start: {}; at the end: {}\n- git commit: {}\n- medians of {} repetitions; ratios are measured side by side in this run\n\n{}",
        start.date,
        start.load,
        load_average(),
        start.commit,
        args.reps,
        report.to_markdown()
    )
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `compare child KIND ARGS...`: one measurement in its own process; prints one JSON line
/// with `peak_rss_kib` (VmHWM) and `secs`.
fn child(rest: &[String]) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kind = rest.first().map(String::as_str).unwrap_or("");
    let t = Instant::now();
    let detail = rt.block_on(async {
        match kind {
            "idle" => Ok(serde_json::json!({})),
            "fingerprint" => pg::child_fingerprint(&rest[1..]).await,
            "copy" => pg::child_copy(&rest[1..]).await,
            "s3-capture" => s3::child_capture(&rest[1..]).await,
            "s3-restore" => s3::child_restore(&rest[1..]).await,
            other => Err(format!("unknown child kind {other:?}").into()),
        }
    })?;
    let out = serde_json::json!({
        "peak_rss_kib": benches::peak_rss_kib(),
        "secs": secs(t),
        "detail": detail,
    });
    println!("{out}");
    Ok(())
}

/// Run `compare child ARGS` and read its JSON line.
pub(crate) async fn run_child(args: &[String], envs: &[(&str, String)]) -> Res<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("child").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().await?;
    if !out.status.success() {
        return Err(format!("child {args:?} failed ({})", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("child printed no result")?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Res<Args> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_select_scale_sections_and_repetitions() {
        let a = parse(&["--scale", "0.1", "--only", "diff,s3", "--reps", "5"]).unwrap();
        assert_eq!(a.scale, 0.1);
        assert_eq!(a.s3_scale(), 0.1);
        assert_eq!(parse(&["--s3-scale", "0.5"]).unwrap().s3_scale(), 0.5);
        assert!(a.wants("diff") && a.wants("s3") && !a.wants("fingerprint"));
        assert_eq!(a.reps, 5);
        assert_eq!(parse(&["--markdown"]).unwrap().markdown, Some(None));
        let m = parse(&["--markdown", "--scale", "0.2"]).unwrap();
        assert_eq!((m.markdown, m.scale), (Some(None), 0.2));
        assert_eq!(
            parse(&["--markdown", "out.md"]).unwrap().markdown,
            Some(Some(PathBuf::from("out.md")))
        );
        let d = parse(&[]).unwrap();
        assert_eq!(d.scale, 1.0);
        assert!(SECTIONS.iter().all(|s| d.wants(s)));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--scale", "0"]).is_err());
        assert!(parse(&["--s3-scale", "-1"]).is_err());
        assert!(parse(&["--only", "nope"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--scale"]).is_err());
    }
}
