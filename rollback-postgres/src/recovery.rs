//! [`RecoveryPoint`]: the WAL position and a named restore point before a migration.

use crate::db::Database;
use crate::error::PgResultExt;
use async_trait::async_trait;
use rollback_core::{Context, Result, Verdict, Verifier};
use serde::{Deserialize, Serialize};

/// Where an operator's point-in-time recovery can bring the cluster back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPointInfo {
    /// `pg_current_wal_lsn()` when it was taken.
    pub lsn: String,
    /// The restore point's name (`recovery_target_name`), if one was created.
    pub restore_point: Option<String>,
    /// The LSN `pg_create_restore_point` returned.
    pub restore_point_lsn: Option<String>,
    /// Why no restore point was created, if none was.
    pub restore_point_error: Option<String>,
    /// WAL segment file holding the LSN.
    pub wal_file: Option<String>,
    /// Timeline of the latest checkpoint.
    pub timeline: Option<i32>,
    /// Server time.
    pub server_time: String,
    /// `wal_level` and `archive_mode` (PITR needs archiving).
    pub wal_level: String,
    /// `archive_mode`.
    pub archive_mode: String,
}

impl RecoveryPointInfo {
    /// The `postgresql.conf` lines an operator sets to recover to this point.
    pub fn recovery_settings(&self) -> String {
        match &self.restore_point {
            Some(name) => {
                format!("recovery_target_name = '{name}'\nrecovery_target_action = 'pause'")
            }
            None => format!(
                "recovery_target_lsn = '{}'\nrecovery_target_action = 'pause'",
                self.lsn
            ),
        }
    }
}

/// A verifier that records a recovery point: `pg_current_wal_lsn()` and
/// `pg_create_restore_point(name)`, so that an operator's PITR tool (pgBackRest, barman,
/// plain `recovery_target_name`) can reach the state before the migration. Put it in the
/// plan as a precondition: it runs before the baseline is captured, and its verdict's
/// evidence — LSN, restore point name, WAL file, timeline and the `recovery_target_*`
/// settings — lands in the run report.
///
/// `pg_create_restore_point` needs superuser (or an explicit `GRANT EXECUTE`) and
/// `wal_level` of `replica` or more. When it cannot be created the verdict fails, unless
/// [`RecoveryPoint::lsn_is_enough`] was set (then the LSN alone is recorded and the
/// verdict passes, saying so). The restore point is useful only if WAL is archived
/// (`archive_mode`); the evidence says whether it is.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_postgres::{Database, RecoveryPoint};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let info = RecoveryPoint::new(&db, "before-split").create("before-split-1").await?;
/// println!("{}", info.recovery_settings());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RecoveryPoint {
    db: Database,
    id: String,
    lsn_is_enough: bool,
}

impl RecoveryPoint {
    /// A recovery-point verifier with id `id` (also the restore point name's prefix).
    pub fn new(db: &Database, id: impl Into<String>) -> Self {
        RecoveryPoint {
            db: db.clone(),
            id: id.into(),
            lsn_is_enough: false,
        }
    }

    /// Pass with the LSN alone when no restore point can be created.
    pub fn lsn_is_enough(mut self) -> Self {
        self.lsn_is_enough = true;
        self
    }

    /// Record the LSN and create the restore point `name` (at most 63 bytes).
    ///
    /// # Errors
    /// Backend errors reading the LSN (a failure to create the restore point is reported in
    /// the returned info, not as an error).
    pub async fn create(&self, name: &str) -> Result<RecoveryPointInfo> {
        let mut name: String = name.to_string();
        while name.len() > 63 {
            name.pop();
        }
        let c = self.db.lib_client().await?;
        let r = c
            .query_one(
                "SELECT pg_current_wal_lsn()::text, now()::text, \
                        current_setting('wal_level'), current_setting('archive_mode')",
                &[],
            )
            .await
            .ctx("reading the WAL position")?;
        let lsn: String = r.get(0);
        // Superuser-only on some servers: optional.
        let timeline: Option<i32> = c
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .ok()
            .map(|r| r.get(0));
        let wal_file = c
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .ok()
            .map(|r| r.get::<_, String>(0));
        let (rp, rp_lsn, rp_err) = match c
            .query_one("SELECT pg_create_restore_point($1)::text", &[&name])
            .await
        {
            Ok(row) => (Some(name.clone()), Some(row.get::<_, String>(0)), None),
            Err(e) => (
                None,
                None,
                Some(crate::error::PgError::new("creating restore point", &e).to_string()),
            ),
        };
        Ok(RecoveryPointInfo {
            lsn,
            restore_point: rp,
            restore_point_lsn: rp_lsn,
            restore_point_error: rp_err,
            wal_file,
            timeline,
            server_time: r.get(1),
            wal_level: r.get(2),
            archive_mode: r.get(3),
        })
    }
}

#[async_trait]
impl Verifier for RecoveryPoint {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let name = format!("{}-{}", self.id, ctx.run_id());
        let info = self.create(&name).await?;
        let mut evidence = serde_json::to_value(&info).unwrap_or_default();
        if let Some(o) = evidence.as_object_mut() {
            o.insert(
                "recovery_settings".into(),
                serde_json::Value::String(info.recovery_settings()),
            );
        }
        let archived = info.archive_mode != "off";
        let verdict = match (&info.restore_point, self.lsn_is_enough) {
            (Some(rp), _) => Verdict::pass(format!(
                "restore point {rp} at {} (WAL {}){}",
                info.restore_point_lsn.as_deref().unwrap_or(&info.lsn),
                info.wal_file.as_deref().unwrap_or("?"),
                if archived {
                    ""
                } else {
                    "; WAL archiving is off: PITR needs archive_mode"
                }
            )),
            (None, true) => Verdict::pass(format!(
                "LSN {} recorded; no restore point: {}",
                info.lsn,
                info.restore_point_error.as_deref().unwrap_or("unknown")
            )),
            (None, false) => Verdict::fail(format!(
                "no restore point: {}",
                info.restore_point_error.as_deref().unwrap_or("unknown")
            )),
        };
        Ok(verdict.with_evidence(evidence))
    }
}
