//! Narrowing two relations with the same columns down to the differing key ranges (chunk
//! digests compared) and rows (each differing range compared row by row by the server),
//! in constant memory.

use crate::error::PgResultExt;
use crate::hash::{ChunkDigest, KeyValue, Shape};
use crate::ident::quote_ident;
use rollback_core::{Digest, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_postgres::Client;

/// Differing ranges whose rows are listed, at most.
const MAX_RANGES: usize = 16;
/// Keys listed per kind at most.
const MAX_KEYS: usize = 50;

/// A key range whose content differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDiff {
    /// First key of the range (text), `None` from the start.
    pub from: Option<String>,
    /// Key the range stops before (text), `None` to the end.
    pub to: Option<String>,
    /// Rows in the baseline.
    pub baseline_rows: u64,
    /// Rows now.
    pub current_rows: u64,
}

/// What differs between a baseline relation and a current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TableDiff {
    /// Rows in the baseline.
    pub baseline_rows: u64,
    /// Rows now.
    pub current_rows: u64,
    /// The differing key ranges (chunks of the baseline).
    pub ranges: Vec<RangeDiff>,
    /// Keys (text) present now but not in the baseline.
    pub added: Vec<String>,
    /// Keys present in the baseline but not now.
    pub removed: Vec<String>,
    /// Keys present in both with different rows.
    pub changed: Vec<String>,
    /// Whether the lists were cut short.
    pub truncated: bool,
}

pub(crate) struct Differ<'a> {
    /// Sessions in one snapshot: the first prints keys, all list differing ranges.
    pub clients: Vec<&'a Client>,
    pub base: Shape,
    pub current: Shape,
    /// Key column types (`format_type`), to print keys.
    pub key_types: Vec<String>,
}

impl Differ<'_> {
    async fn key_text(&self, k: &Option<KeyValue>) -> Result<Option<String>> {
        let Some(k) = k else { return Ok(None) };
        let params = k.params()?;
        let exprs: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("(${}::{t})::text", i + 1))
            .collect();
        let row = self.clients[0]
            .query_one(
                &format!("SELECT concat_ws(', ', {})", exprs.join(", ")),
                &params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect::<Vec<_>>(),
            )
            .await
            .ctx("printing a key")?;
        Ok(Some(row.get(0)))
    }

    /// The keys whose rows differ in `lo <= key < hi`, listed by the server: the two
    /// relations' rows of the range joined on the key (a full outer join, so rows on one
    /// side only are found too) and compared by their binary encoding (`record_send` of the
    /// hashed columns: the same bytes, field by field, as the hash is taken over). Reads the
    /// range once on each side; only the differing keys reach the client.
    async fn list(
        &self,
        client: &Client,
        lo: Option<&KeyValue>,
        hi: Option<&KeyValue>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let (pred, params, _) = self.base.range_pred("t", lo, hi, 1);
        let side = |shape: &Shape| {
            let keys: Vec<String> = shape
                .key
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{} AS rb_k{i}", quote_ident(k)))
                .collect();
            let cols: Vec<String> = shape
                .columns
                .iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .collect();
            format!(
                "SELECT {}, pg_catalog.record_send(ROW({})) AS rb_row FROM {} t WHERE {pred}",
                keys.join(", "),
                cols.join(", "),
                shape.rel
            )
        };
        let n = self.base.key.len();
        let join: Vec<String> = (0..n).map(|i| format!("a.rb_k{i} = b.rb_k{i}")).collect();
        let key: Vec<String> = (0..n)
            .map(|i| format!("coalesce(a.rb_k{i}, b.rb_k{i})"))
            .collect();
        let sql = format!(
            "SELECT CASE WHEN a.rb_row IS NULL THEN 'added' WHEN b.rb_row IS NULL THEN 'removed' ELSE 'changed' END, \
                    concat_ws(', ', {}) \
             FROM ({}) a FULL JOIN ({}) b ON {} \
             WHERE a.rb_row IS DISTINCT FROM b.rb_row \
             ORDER BY {} LIMIT {}",
            key.iter()
                .map(|k| format!("({k})::text"))
                .collect::<Vec<_>>()
                .join(", "),
            side(&self.base),
            side(&self.current),
            join.join(" AND "),
            key.join(", "),
            3 * MAX_KEYS + 1
        );
        client
            .query(
                sql.as_str(),
                &params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect::<Vec<_>>(),
            )
            .await
            .ctx("listing the differing rows of a key range")
    }

    /// Compare: `chunks` are the baseline's key-range chunks (from a snapshot or a pass
    /// over the baseline; none when the baseline was empty) and `now` the current
    /// relation's rows and digest over the same ranges (one range when there are no
    /// chunks); `base_present` says whether the baseline relation can be read (else only
    /// the differing ranges are listed). Only the differing ranges are read again.
    pub(crate) async fn diff(
        &self,
        chunks: &[ChunkDigest],
        now: &[(u64, Digest)],
        base_rows: u64,
        base_present: bool,
    ) -> Result<TableDiff> {
        let mut d = TableDiff {
            baseline_rows: base_rows,
            current_rows: now.iter().map(|n| n.0).sum(),
            ..Default::default()
        };
        let empty = [ChunkDigest {
            start: None,
            rows: base_rows,
            digest: Digest::default(),
        }];
        let chunks = if chunks.is_empty() {
            &empty[..]
        } else {
            chunks
        };
        if chunks.len() != now.len() {
            return Err(crate::error::backend_msg(
                "internal: a table hash per baseline chunk was expected",
            ));
        }
        let mut differing = Vec::new();
        for (i, (c, n)) in chunks.iter().zip(now).enumerate() {
            if *n != (c.rows, c.digest) {
                let hi = chunks.get(i + 1).and_then(|n| n.start.clone());
                differing.push((c.start.clone(), hi, c.rows, n.0));
            }
        }
        for (lo, hi, a, b) in &differing {
            d.ranges.push(RangeDiff {
                from: self.key_text(lo).await?,
                to: self.key_text(hi).await?,
                baseline_rows: *a,
                current_rows: *b,
            });
        }
        if base_present && !self.base.key.is_empty() {
            // The ranges shared by the sessions, the keys taken in range order.
            let todo: Vec<_> = differing.iter().take(MAX_RANGES).collect();
            let next = AtomicUsize::new(0);
            let workers = self.clients.iter().map(|c| {
                let (next, todo) = (&next, &todo);
                async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((lo, hi, _, _)) = todo.get(i) else {
                            break;
                        };
                        done.push((i, self.list(c, lo.as_ref(), hi.as_ref()).await?));
                    }
                    Ok::<_, rollback_core::Error>(done)
                }
            });
            let mut listed: Vec<_> = futures::future::try_join_all(workers)
                .await?
                .into_iter()
                .flatten()
                .collect();
            listed.sort_by_key(|(i, _)| *i);
            for (_, rows) in listed {
                if rows.len() > 3 * MAX_KEYS {
                    d.truncated = true;
                }
                for r in rows.iter().take(3 * MAX_KEYS) {
                    let kind: &str = r.get(0);
                    let k: String = r.get(1);
                    let list = match kind {
                        "added" => &mut d.added,
                        "removed" => &mut d.removed,
                        _ => &mut d.changed,
                    };
                    push(list, &k, &mut d.truncated);
                }
            }
            if d.ranges.len() > MAX_RANGES {
                d.truncated = true;
            }
        }
        Ok(d)
    }
}

fn push(v: &mut Vec<String>, k: &str, truncated: &mut bool) {
    if v.len() < MAX_KEYS {
        v.push(k.to_string());
    } else {
        *truncated = true;
    }
}
