//! The copy restore: the tables are truncated together and their rows copied back from
//! the snapshot copies, parents first — refused when a table outside the checkpoint
//! references one of them.

use super::super::{Descriptor, Entry, TableSnapshot};
use super::{fk_info, overriding, Attempt};
use crate::error::PgResultExt;
use crate::ident::column_list;
use crate::triggers;
use rollback_core::Result;
use tokio_postgres::Transaction;

impl TableSnapshot {
    pub(super) async fn copy_back(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
        let fks = fk_info(tx, &self.tables).await?;
        if let Some((name, child, parent, _)) = fks.incoming.first() {
            return Ok(Attempt::Unsuitable(format!(
                "foreign key {name} of {child} (outside the checkpoint) references {parent}"
            )));
        }
        let plans = match self.reconcile_plans(tx, d, true).await? {
            Ok(p) => p,
            Err(why) => return Ok(Attempt::Unsuitable(why)),
        };
        let mut items = self.drop_absent(tx, d).await?;
        let present: Vec<&Entry> = d
            .tables
            .iter()
            .filter(|e| e.definition.is_some() && e.copy.is_some())
            .collect();
        if present.is_empty() {
            return Ok(Attempt::Done(items, vec![]));
        }
        tx.batch_execute(&format!(
            "TRUNCATE {}",
            present
                .iter()
                .map(|e| e.table.quoted())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .ctx("truncating tables for restore")?;
        for (_, p, _) in &plans {
            Self::run_all(tx, &p.pre, "restoring table definition").await?;
        }
        let disabled = triggers::disable_for_restore(
            tx,
            &present.iter().map(|e| &e.table).collect::<Vec<_>>(),
            None,
        )
        .await?;
        for t in &fks.order {
            let Some(e) = present.iter().find(|e| &e.table == t) else {
                continue;
            };
            let (Some(def), Some(copy)) = (&e.definition, &e.copy) else {
                continue;
            };
            let cols = def.insertable_columns();
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO {} ({}) {} SELECT {} FROM {}",
                        t.quoted(),
                        column_list(&cols),
                        overriding(def),
                        column_list(&cols),
                        copy.quoted()
                    ),
                    &[],
                )
                .await
                .ctx(&format!("copying rows back into {t}"))?;
            items += n;
        }
        triggers::reenable(tx, &disabled).await?;
        let notes = self.finish_structure(tx, &plans, d).await?;
        self.set_sequences(tx, d).await?;
        Ok(Attempt::Done(items, notes))
    }
}
