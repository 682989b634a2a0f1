//! A verify script (sqitch's `verify/<change>.sql`) as a post-step verifier: it passes
//! when the script runs without an error, in a transaction that is always rolled back.

use super::{scan, MigrationError};
use crate::db::Database;
use async_trait::async_trait;
use rollback_core::{Context, Verdict, Verifier};
use std::path::{Path, PathBuf};

/// Runs a script that raises an error when the change is not there (sqitch's convention:
/// `SELECT … FROM table WHERE FALSE`, `SELECT 1/COUNT(*) …`).
#[derive(Debug, Clone)]
pub(crate) struct ScriptVerifier {
    db: Database,
    id: String,
    file: PathBuf,
    sql: String,
}

impl ScriptVerifier {
    /// The script without its `BEGIN; … ROLLBACK;` (or `COMMIT`) wrapper; other
    /// transaction control is refused, naming the file and line.
    pub(crate) fn new(
        db: &Database,
        id: String,
        file: &Path,
        text: &str,
    ) -> Result<Self, MigrationError> {
        Ok(ScriptVerifier {
            db: db.clone(),
            id,
            file: file.to_path_buf(),
            sql: scan::unwrap_wrapper(file, text, 1, true)?,
        })
    }
}

#[async_trait]
impl Verifier for ScriptVerifier {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        let c = self.db.client().await?;
        let be = |e| rollback_core::Error::backend("postgres", e);
        c.batch_execute("BEGIN").await.map_err(be)?;
        let run = c.batch_execute(&self.sql).await;
        c.batch_execute("ROLLBACK").await.map_err(be)?;
        let file = self.file.display().to_string();
        Ok(match run {
            Ok(()) => Verdict::pass(format!("{file} ran without an error")),
            Err(e) => {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                Verdict::fail(format!("{file}: {why}"))
            }
        }
        .with_evidence(serde_json::json!({ "script": file })))
    }
}
