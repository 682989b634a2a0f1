//! Choosing the backends of the examples: real servers from the environment, or the
//! embedded default.
//!
//! | component | from the environment | embedded default |
//! |---|---|---|
//! | database | `DATABASE_URL` (or `ROLLBACK_TEST_PG_URL`) | a [throwaway cluster](rollback_testkit::cluster) from the local PostgreSQL binaries |
//! | objects | `S3_ENDPOINT` + `S3_ACCESS_KEY` + `S3_SECRET_KEY` [+ `S3_REGION`] (or the `ROLLBACK_TEST_S3_*` ones) | a local folder ([`FolderBackend`]) |
//! | flags | `UNLEASH_URL` + `UNLEASH_ADMIN_TOKEN` (or the `ROLLBACK_TEST_UNLEASH_*` ones), project `default`, environment `development` | a flagd-format flag file |
//! | journal | PostgreSQL (`_rollback` schema of the same database) when the database comes from the environment | a file journal |
//!
//! Each component is chosen on its own, so any mix works.

use crate::cutover::{Backends, Names};
use rollback_core::journal::{FileJournal, Journal};
use rollback_flags::{FileProvider, FlagProvider, UnleashProvider};
use rollback_postgres::{Database, PgJournal};
use rollback_s3::{FolderBackend, ObjectBackend, S3Bucket, S3Settings};
use rollback_testkit::cluster::{ClusterError, ThrowawayCluster};
use std::path::Path;
use std::sync::Arc;

/// The chosen backends, the throwaway cluster when one was started (it stops when this
/// is dropped), and one line per component saying what was chosen.
#[derive(Debug)]
pub struct Setup {
    /// The backends.
    pub backends: Backends,
    /// The throwaway cluster, when the database is the embedded default.
    pub cluster: Option<ThrowawayCluster>,
    /// What was chosen, one line per component (never a secret).
    pub chosen: Vec<String>,
}

/// Why the backends could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The embedded default database could not be started.
    #[error("no database: DATABASE_URL is not set, and a throwaway PostgreSQL cluster could not be started: {0}")]
    Cluster(#[from] ClusterError),
    /// A backend refused its configuration.
    #[error(transparent)]
    Backend(#[from] rollback_core::Error),
    /// A local I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.is_empty())
}

/// Choose every backend (see the module docs). `work_dir` holds the embedded default's
/// files; `label` names what is created on real servers (bucket `saas-cutover-<label>`,
/// flags `saas-cutover-<label>.*`).
///
/// # Errors
/// [`SetupError::Cluster`] when no database is configured and none can be started
/// (e.g. no PostgreSQL binaries); backend configuration errors.
pub async fn from_env(work_dir: &Path, label: &str) -> Result<Setup, SetupError> {
    std::fs::create_dir_all(work_dir)?;
    let work_dir = &work_dir.canonicalize()?;
    let mut chosen = Vec::new();

    let (db, cluster, external_db) = match var(&["DATABASE_URL", "ROLLBACK_TEST_PG_URL"]) {
        Some(url) => {
            let db = Database::connect(&url)?;
            chosen.push(format!("database: PostgreSQL {db} (from the environment)"));
            (db, None, true)
        }
        None => {
            let cluster = ThrowawayCluster::start()?;
            let db = Database::connect(&cluster.url("postgres"))?;
            chosen.push(format!(
                "database: throwaway PostgreSQL cluster on 127.0.0.1:{} from {} (stopped and deleted at the end)",
                cluster.port(),
                cluster.bin_dir().display()
            ));
            (db, Some(cluster), false)
        }
    };

    let s3 = S3Settings::from_env("S3").or_else(|| S3Settings::from_env("ROLLBACK_TEST_S3"));
    let storage: Arc<dyn ObjectBackend> = match s3 {
        Some(settings) => {
            let name = format!("saas-cutover-{label}");
            let store = S3Bucket::connect(&settings, format!("{name}-rollback"));
            store.create(false).await?;
            let bucket = S3Bucket::connect(&settings, &name).store(store.name(), "");
            bucket.create(true).await?;
            chosen.push(format!(
                "objects: S3 at {}, bucket {name} (versioned), snapshots in bucket {name}-rollback",
                settings.endpoint().unwrap_or("Amazon S3")
            ));
            Arc::new(bucket)
        }
        None => {
            let store = FolderBackend::new(work_dir.join("objects"), work_dir.join("state"))
                .named("attachments");
            chosen.push(format!(
                "objects: local folder {} (snapshots and step state in {})",
                store.root().display(),
                store.state().display()
            ));
            Arc::new(store)
        }
    };

    let flags: Arc<dyn FlagProvider> = match UnleashProvider::from_env("default", "development")? {
        Some(u) => {
            chosen.push(format!("flags: {u:?}"));
            Arc::new(u)
        }
        None => {
            let file = FileProvider::new(work_dir.join("flags.json")).with_scope("saas-cutover");
            chosen.push(format!("flags: flag file {}", file.path().display()));
            Arc::new(file)
        }
    };

    let (journal, journal_description): (Arc<dyn Journal>, String) = if external_db {
        (
            Arc::new(PgJournal::new(&db)),
            format!("PostgreSQL journal in {db} (schema _rollback)"),
        )
    } else {
        let dir = work_dir.join("journal");
        (
            Arc::new(FileJournal::open(&dir)?),
            format!("file journal {}", dir.display()),
        )
    };
    chosen.push(format!("journal: {journal_description}"));

    let prefix = if matches!(flags.kind(), "unleash") {
        format!("saas-cutover-{label}.")
    } else {
        String::new()
    };
    Ok(Setup {
        backends: Backends {
            db,
            storage,
            flags,
            journal,
            journal_description,
            names: Names::new(&prefix),
        },
        cluster,
        chosen,
    })
}
