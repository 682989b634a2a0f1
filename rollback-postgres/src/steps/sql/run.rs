//! Running a [`SqlStep`]: in one transaction with its step marker, or statement by
//! statement outside one; its settings and guards, the receipt, and whether an apply
//! committed after a broken connection.

use crate::error::{Class, PgError, PgResultExt};
use crate::ident::quote_ident;
use crate::markers::{self, DELETE_MARKER, MARK_APPLIED};
use crate::sqlscan::{self, Statement};
use rollback_core::{Context, Digest, Error, Receipt, Result, Reversibility, Step};

use super::{short, SqlReceipt, SqlStep};

impl SqlStep {
    /// The step's own settings, for the transaction (`local`) or the session.
    pub(super) async fn apply_settings<C: tokio_postgres::GenericClient>(
        &self,
        c: &C,
        local: bool,
    ) -> std::result::Result<(), PgError> {
        for (name, value) in &self.settings {
            c.execute(
                "SELECT pg_catalog.set_config($1, $2, $3)",
                &[name, value, &local],
            )
            .await
            .map_err(|e| PgError::new(format!("step {}: setting {name}", self.id), &e))?;
        }
        Ok(())
    }

    pub(super) fn guards_sql(&self, local: bool) -> String {
        let scope = if local { "SET LOCAL" } else { "SET" };
        format!(
            "{scope} lock_timeout = '{}ms'; {scope} statement_timeout = '{}ms'",
            self.lock_timeout.as_millis().max(1),
            self.statement_timeout.as_millis().max(1)
        )
    }

    pub(super) fn receipt(&self, ctx: &Context) -> SqlReceipt {
        SqlReceipt {
            run_id: ctx.run_id().to_string(),
            step_id: self.id.clone(),
            mode: self.mode(),
            up_digest: Digest::of(self.up.as_bytes()),
        }
    }

    pub(super) async fn ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| markers::ensure(&self.db, &self.marker_schema))
            .await
            .map(|_| ())
    }

    /// After a broken connection during COMMIT: did the apply commit?
    pub(super) async fn committed(&self, ctx: &Context) -> Result<Option<Receipt>> {
        let c = self.db.lib_client().await?;
        let m = markers::read(&**c, &self.marker_schema, ctx.run_id(), &self.id)
            .await
            .ctx("checking the step marker")?;
        Ok(m.filter(|(state, _)| state == "applied")
            .map(|(_, r)| Receipt(r)))
    }

    pub(super) async fn apply_tx(&self, ctx: &Context) -> Result<Receipt> {
        let run = ctx.run_id();
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .transaction()
            .await
            .ctx("starting step transaction")?;
        tx.batch_execute(&self.guards_sql(true))
            .await
            .ctx("setting timeouts")?;
        markers::lock_xact(&tx, run, &self.id)
            .await
            .ctx("locking the step marker")?;
        markers::fence(&tx, &self.marker_schema, ctx).await?;
        markers::abort_if_idle(&tx, ctx).await?;
        markers::attribute(&tx, ctx, true).await?;
        if let Some((_, r)) = markers::read(&tx, &self.marker_schema, run, &self.id)
            .await
            .ctx("reading the step marker")?
        {
            tracing::info!(step = %self.id, "already applied in this run; not running again");
            // Keep the fence raised even though nothing else changed.
            tx.commit().await.ctx("ending step transaction")?;
            return Ok(Receipt(r));
        }
        self.check_guard(&tx).await?;
        tx.batch_execute(&crate::db::user_settings_sql(true))
            .await
            .ctx("setting the database's search path")?;
        self.apply_settings(&tx, true)
            .await
            .map_err(|e| e.into_core(false))?;
        tx.batch_execute(&self.up)
            .await
            .map_err(|e| PgError::new(format!("step {}: up", self.id), &e).into_core(false))?;
        tx.batch_execute(&crate::db::library_settings_sql(true))
            .await
            .ctx("setting the library's search path")?;
        // The crate's own SQL runs with the library's search path: nothing the database's
        // path puts before pg_catalog can stand in for a function it calls.
        if let Some((after_up, _)) = &self.bookkeeping {
            tx.batch_execute(after_up).await.map_err(|e| {
                PgError::new(format!("step {}: bookkeeping after up", self.id), &e).into_core(false)
            })?;
        }
        self.check_created(&tx, true).await?;
        let receipt = Receipt::new(&self.receipt(ctx));
        let json = receipt.0.to_string();
        markers::insert(
            &tx,
            &self.marker_schema,
            run,
            &self.id,
            &json,
            markers::State::Applied,
            markers::Existing::Fail,
        )
        .await
        .ctx("writing the step marker")?;
        match tx.commit().await {
            Ok(()) => Ok(receipt),
            Err(e) => {
                let pe = PgError::new(format!("step {}: commit", self.id), &e);
                if pe.class() != Class::Connection {
                    return Err(pe.into_core(false));
                }
                // The outcome of COMMIT is unknown: ask the database.
                match self.committed(ctx).await {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err(pe.into_core(false)),
                    Err(_) => Err(pe.into_core(true)),
                }
            }
        }
    }

    pub(super) async fn revert_tx(&self, ctx: &Context) -> Result<()> {
        let run = ctx.run_id();
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .transaction()
            .await
            .ctx("starting revert transaction")?;
        tx.batch_execute(&self.guards_sql(true))
            .await
            .ctx("setting timeouts")?;
        markers::lock_xact(&tx, run, &self.id)
            .await
            .ctx("locking the step marker")?;
        markers::fence(&tx, &self.marker_schema, ctx).await?;
        markers::abort_if_idle(&tx, ctx).await?;
        markers::attribute(&tx, ctx, true).await?;
        if markers::read(&tx, &self.marker_schema, run, &self.id)
            .await
            .ctx("reading the step marker")?
            .is_none()
        {
            // Never applied in this run, or already reverted. Commit all the same: the
            // raised fence keeps a paused older runner from applying it after this.
            tx.commit().await.ctx("ending revert transaction")?;
            return Ok(());
        }
        if self.reversibility() == Reversibility::Compensable {
            if let Some(down) = &self.down {
                tx.batch_execute(&crate::db::user_settings_sql(true))
                    .await
                    .ctx("setting the database's search path")?;
                self.apply_settings(&tx, true)
                    .await
                    .map_err(|e| e.into_core(false))?;
                tx.batch_execute(down).await.map_err(|e| {
                    PgError::new(format!("step {}: down", self.id), &e).into_core(false)
                })?;
                tx.batch_execute(&crate::db::library_settings_sql(true))
                    .await
                    .ctx("setting the library's search path")?;
                if let Some((_, after_down)) = &self.bookkeeping {
                    tx.batch_execute(after_down).await.map_err(|e| {
                        PgError::new(format!("step {}: bookkeeping after down", self.id), &e)
                            .into_core(false)
                    })?;
                }
                self.check_created(&tx, false).await?;
            }
        }
        markers::execute(&tx, &self.marker_schema, DELETE_MARKER, run, &self.id)
            .await
            .ctx("deleting the step marker")?;
        tx.commit().await.ctx("committing revert")
    }

    pub(super) async fn session(&self) -> Result<Session> {
        match self.db.dedicated_lib().await {
            Ok(c) => Ok(Session::Dedicated(c)),
            Err(Error::Invalid { .. }) => Ok(Session::Pooled(self.db.lib_client().await?)),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn apply_non_tx(&self, ctx: &Context) -> Result<Receipt> {
        let session = self.session().await?;
        let Some((lock, unlock)) = &self.guard_session_lock else {
            return self.apply_non_tx_in(ctx, &session).await;
        };
        // The guard's lock, held through `up` and the bookkeeping: another runner's
        // guard waits for it.
        session
            .client()
            .batch_execute(&format!("{}; {lock}", self.guards_sql(false)))
            .await
            .map_err(|e| {
                PgError::new(format!("step {}: guard lock", self.id), &e).into_core(false)
            })?;
        let res = self.apply_non_tx_in(ctx, &session).await;
        // A session that cannot unlock is broken; the pool resets it (advisory locks
        // included) before its next use, and a dedicated one is closed.
        let _ = session.client().batch_execute(unlock).await;
        res
    }

    pub(super) async fn apply_non_tx_in(
        &self,
        ctx: &Context,
        session: &Session,
    ) -> Result<Receipt> {
        let run = ctx.run_id();
        let c = session.client();
        // Statements that cannot run in a transaction cannot be fenced atomically: raise
        // or check the fence just before them (a takeover after this point can still race
        // them; the takeover's revert then undoes them).
        markers::fence(c, &self.marker_schema, ctx).await?;
        markers::attribute(c, ctx, false).await?;
        if let Some((state, r)) = markers::read(c, &self.marker_schema, run, &self.id)
            .await
            .ctx("reading the step marker")?
        {
            if state == "applied" {
                return Ok(Receipt(r));
            }
        } else {
            // Not started in this run: nothing else may have recorded it either.
            self.check_guard(c).await?;
        }
        let receipt = Receipt::new(&self.receipt(ctx));
        let json = receipt.0.to_string();
        markers::insert(
            c,
            &self.marker_schema,
            run,
            &self.id,
            &json,
            markers::State::Applying,
            markers::Existing::Keep,
        )
        .await
        .ctx("writing the step marker")?;
        let mut res = self.run_statements(session, &self.up).await;
        if let (Ok(()), Some((after_up, _))) = (&res, &self.bookkeeping) {
            // With the library's search path (`run_statements` leaves it set).
            res =
                session.client().batch_execute(after_up).await.map_err(|e| {
                    PgError::new(format!("step {}: bookkeeping after up", self.id), &e)
                });
        }
        session.reset().await;
        res.map_err(|e| e.into_core(true))?;
        // `up` ran outside a transaction: a failed declaration check leaves it applied.
        self.check_created(c, true)
            .await
            .map_err(|e| Error::backend("postgres", e))?;
        markers::execute(c, &self.marker_schema, MARK_APPLIED, run, &self.id)
            .await
            .map_err(|e| PgError::new("marking the step applied", &e).into_core(true))?;
        Ok(receipt)
    }

    pub(super) async fn revert_non_tx(&self, ctx: &Context) -> Result<()> {
        let run = ctx.run_id();
        let session = self.session().await?;
        let c = session.client();
        markers::fence(c, &self.marker_schema, ctx).await?;
        markers::attribute(c, ctx, false).await?;
        if markers::read(c, &self.marker_schema, run, &self.id)
            .await
            .ctx("reading the step marker")?
            .is_none()
        {
            return Ok(());
        }
        if self.reversibility() == Reversibility::Compensable {
            if let Some(down) = &self.down {
                let mut res = self.run_statements(&session, down).await;
                if let (Ok(()), Some((_, after_down))) = (&res, &self.bookkeeping) {
                    res = session
                        .client()
                        .batch_execute(after_down)
                        .await
                        .map_err(|e| {
                            PgError::new(format!("step {}: bookkeeping after down", self.id), &e)
                        });
                }
                session.reset().await;
                res.map_err(|e| e.into_core(true))?;
                self.check_created(c, false).await?;
            }
        }
        markers::execute(c, &self.marker_schema, DELETE_MARKER, run, &self.id)
            .await
            .ctx("deleting the step marker")?;
        Ok(())
    }

    pub(super) async fn run_statements(
        &self,
        session: &Session,
        sql: &str,
    ) -> std::result::Result<(), PgError> {
        let c = session.client();
        c.batch_execute(&self.guards_sql(false))
            .await
            .map_err(|e| PgError::new("setting timeouts", &e))?;
        self.apply_settings(c, false).await?;
        for st in sqlscan::split(sql) {
            // The user's statement, and the lookup of an index it names, see the
            // database's own search path.
            c.batch_execute(&crate::db::user_settings_sql(false))
                .await
                .map_err(|e| PgError::new("setting the database's search path", &e))?;
            let ran = async {
                self.clean_invalid_index(c, &st).await?;
                c.batch_execute(&st.text)
                    .await
                    .map_err(|e| PgError::new(format!("step {}: {}", self.id, short(&st.text)), &e))
            }
            .await;
            c.batch_execute(&crate::db::library_settings_sql(false))
                .await
                .map_err(|e| PgError::new("setting the library's search path", &e))?;
            ran?;
        }
        Ok(())
    }

    /// Drop an invalid index left by an interrupted `CREATE INDEX CONCURRENTLY` of the
    /// same name, so that re-running it builds a valid one.
    pub(super) async fn clean_invalid_index(
        &self,
        c: &tokio_postgres::Client,
        st: &Statement,
    ) -> std::result::Result<(), PgError> {
        let Some(name) = sqlscan::concurrent_index_name(st) else {
            return Ok(());
        };
        let (schema, index) = match name.rsplit_once('.') {
            Some((s, i)) => (Some(s.to_string()), i.to_string()),
            None => (None, name.clone()),
        };
        let row = c
            .query_opt(
                "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class ic \
                 JOIN pg_catalog.pg_index i ON i.indexrelid OPERATOR(pg_catalog.=) ic.oid \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ic.relnamespace \
                 WHERE ic.relname OPERATOR(pg_catalog.=) $1::pg_catalog.name AND NOT i.indisvalid \
                   AND (($2::pg_catalog.name IS NULL AND pg_catalog.pg_table_is_visible(ic.oid)) \
                        OR n.nspname OPERATOR(pg_catalog.=) $2::pg_catalog.name)",
                &[&index, &schema],
            )
            .await
            .map_err(|e| PgError::new("looking for an invalid index", &e))?;
        if let Some(r) = row {
            let ns: String = r.get(0);
            tracing::warn!(index = %index, "dropping invalid index left by an interrupted build");
            c.batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                quote_ident(&ns),
                quote_ident(&index)
            ))
            .await
            .map_err(|e| PgError::new("dropping an invalid index", &e))?;
        }
        Ok(())
    }
}

pub(super) enum Session {
    Dedicated(tokio_postgres::Client),
    Pooled(deadpool_postgres::Object),
}

impl Session {
    pub(super) fn client(&self) -> &tokio_postgres::Client {
        match self {
            Session::Dedicated(c) => c,
            Session::Pooled(o) => o,
        }
    }
    pub(super) async fn reset(&self) {
        if let Session::Pooled(o) = self {
            // Defence in depth: the pool resets the whole session before its next use.
            let _ = o
                .batch_execute(&format!(
                    "RESET lock_timeout; RESET statement_timeout; RESET \"{}\"",
                    crate::checkpoint::undo_log::WRITER_SETTING.replace('.', "\".\"")
                ))
                .await;
        }
    }
}
