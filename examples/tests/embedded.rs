//! The cutover on the embedded default — a throwaway PostgreSQL cluster from the local
//! binaries, a local folder for objects, a flag file, a file journal — as
//! `cargo run -p examples --example saas_cutover` runs it on a fresh machine.

use examples::cutover::{self, Backends, FailAt, Names, Options};
use rollback_core::journal::FileJournal;
use rollback_core::{Outcome, RollbackScope};
use rollback_flags::{FileProvider, FlagProvider, FlagState};
use rollback_postgres::Database;
use rollback_s3::FolderBackend;
use rollback_testkit::cluster::{find_binaries, ThrowawayCluster};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayout_failure_on_the_embedded_default_keeps_the_database_and_restores_the_folder() {
    find_binaries().unwrap_or_else(|e| {
        panic!("{e}\nrun the tests through scripts/test (it installs PostgreSQL and exports ROLLBACK_PG_BIN)")
    });
    let mut cluster = tokio::task::spawn_blocking(ThrowawayCluster::start)
        .await
        .unwrap()
        .expect("start a throwaway cluster");
    let port = cluster.port();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&cluster.url("postgres")).unwrap();
    let store = FolderBackend::new(dir.path().join("objects"), dir.path().join("state"))
        .named("attachments");
    let flags = Arc::new(FileProvider::new(dir.path().join("flags.json")).with_scope("saas"));
    let backends = Backends {
        db: db.clone(),
        storage: Arc::new(store.clone()),
        flags: flags.clone(),
        journal: Arc::new(FileJournal::open(dir.path().join("journal")).unwrap()),
        journal_description: "file journal".into(),
        names: Names::new(""),
    };
    let opts = Options {
        fail_at: FailAt::Relayout,
        scope: RollbackScope::Component,
        soak: Duration::from_millis(300),
        stage_pause: Duration::from_millis(10),
        ..Options::default()
    };
    backends.seed(&opts).await.unwrap();
    let objects_before = files(store.root());
    assert_eq!(objects_before.len() as u64, opts.attachments);
    assert!(objects_before.keys().all(|k| k.starts_with("v1/")));

    let plan = backends.plan(&opts).unwrap();
    let run = backends.execute(&plan, &opts, false, false).await.unwrap();
    let r = &run.report;
    let md = r.to_markdown();
    assert_eq!(r.outcome, Outcome::PartiallyRolledBack, "{md}");
    assert!(r.parity_proven(), "{md}");
    assert_eq!(r.kept_verified(), Some(true), "{md}");
    assert_eq!(r.undone(), vec![cutover::steps::MOVE], "{md}");
    assert!(
        md.contains("injected failure after 100 objects"),
        "the move must stop midway: {md}"
    );

    // Objects: the same files, byte for byte (read with std::fs).
    assert_eq!(files(store.root()), objects_before);
    // Flags (read from the file): use_v2_storage off as before, new_name_fields at 100 %.
    assert_eq!(
        flags.get(&backends.names.use_v2_storage).await.unwrap(),
        Some(FlagState::off())
    );
    let nf = flags
        .get(&backends.names.new_name_fields)
        .await
        .unwrap()
        .unwrap();
    assert!(nf.enabled);
    assert_eq!(nf.rollout_percent(), Some(100));
    // Database: the split is kept.
    let c = db.client().await.unwrap();
    let bad: i64 = c
        .query_one(
            "SELECT count(*) FROM saas.customers WHERE first_name || ' ' || last_name <> name OR first_name IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    drop(c);
    drop(db);

    // The cluster stops and its folder goes away.
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the throwaway cluster still listens on {port}"
    );
}
