//! Bisecting two relations with the same columns down to the differing key ranges and
//! rows, in constant memory.

use crate::error::PgResultExt;
use crate::hash::{self, encode_tuple, ChunkDigest, KeyValue, RawParam, Shape};
use crate::ident::quote_ident;
use futures::{pin_mut, TryStreamExt};
use rollback_core::{Digest, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// Rows at or below which a range is compared row by row.
const LEAF: u64 = 64;
/// Rows fetched per side at a leaf at most.
const LEAF_FETCH: i64 = 2_000;
/// Differing ranges bisected at most.
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
    pub client: &'a Client,
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
        let row = self
            .client
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

    /// The key at `offset` rows into `[lo, hi)` of the baseline.
    async fn key_at(
        &self,
        lo: Option<&KeyValue>,
        hi: Option<&KeyValue>,
        offset: u64,
    ) -> Result<Option<KeyValue>> {
        let (pred, mut params, n) = self.base.range_pred("t", lo, hi, 1);
        let sql = format!(
            "SELECT {} FROM {} t WHERE {pred} ORDER BY {} OFFSET ${n}::bigint LIMIT 1",
            self.base
                .key
                .iter()
                .map(|k| format!("t.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", "),
            self.base.rel,
            self.base.order_by("t")
        );
        params.push(RawParam((offset as i64).to_be_bytes().to_vec()));
        let row = self
            .client
            .query_opt(
                sql.as_str(),
                &params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect::<Vec<_>>(),
            )
            .await
            .ctx("finding a split key")?;
        Ok(row.map(|r| {
            KeyValue(
                (0..r.len())
                    .map(|i| {
                        r.try_get::<_, Option<hash::Raw<'_>>>(i)
                            .ok()
                            .flatten()
                            .map(|v| hash::to_hex(v.0))
                            .unwrap_or_default()
                    })
                    .collect(),
            )
        }))
    }

    /// (key text → row digest) of `[lo, hi)`, at most LEAF_FETCH rows.
    async fn rows(
        &self,
        shape: &Shape,
        lo: Option<&KeyValue>,
        hi: Option<&KeyValue>,
    ) -> Result<(BTreeMap<String, Digest>, bool)> {
        let (pred, params, _) = shape.range_pred("t", lo, hi, 1);
        let keys: Vec<String> = shape
            .key
            .iter()
            .map(|k| format!("t.{}::text", quote_ident(k)))
            .collect();
        let sql = format!(
            "SELECT concat_ws(', ', {}), {} FROM {} t WHERE {pred} ORDER BY {} LIMIT {}",
            keys.join(", "),
            shape
                .columns
                .iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
            shape.rel,
            shape.order_by("t"),
            LEAF_FETCH + 1
        );
        let stream = self
            .client
            .query_raw(sql.as_str(), params.iter())
            .await
            .ctx("reading rows to compare")?;
        pin_mut!(stream);
        let mut out = BTreeMap::new();
        let mut buf = Vec::new();
        let mut n = 0;
        while let Some(row) = stream.try_next().await.ctx("reading rows to compare")? {
            n += 1;
            if n > LEAF_FETCH {
                return Ok((out, true));
            }
            let key: String = row.get(0);
            encode_tuple(&row, &mut buf)?;
            out.insert(key, Digest::of(&buf));
        }
        Ok((out, false))
    }

    async fn leaf(
        &self,
        lo: Option<&KeyValue>,
        hi: Option<&KeyValue>,
        d: &mut TableDiff,
    ) -> Result<()> {
        let (a, ta) = self.rows(&self.base, lo, hi).await?;
        let (b, tb) = self.rows(&self.current, lo, hi).await?;
        d.truncated |= ta || tb;
        for (k, da) in &a {
            match b.get(k) {
                None => push(&mut d.removed, k, &mut d.truncated),
                Some(db) if db != da => push(&mut d.changed, k, &mut d.truncated),
                _ => {}
            }
        }
        for k in b.keys() {
            if !a.contains_key(k) {
                push(&mut d.added, k, &mut d.truncated);
            }
        }
        Ok(())
    }

    async fn bisect(
        &self,
        lo: Option<KeyValue>,
        hi: Option<KeyValue>,
        rows: u64,
        d: &mut TableDiff,
        depth: u32,
    ) -> Result<()> {
        if rows <= LEAF || depth > 40 {
            return self.leaf(lo.as_ref(), hi.as_ref(), d).await;
        }
        let Some(mid) = self.key_at(lo.as_ref(), hi.as_ref(), rows / 2).await? else {
            return self.leaf(lo.as_ref(), hi.as_ref(), d).await;
        };
        for (l, h) in [(lo.clone(), Some(mid.clone())), (Some(mid), hi.clone())] {
            let a = hash::hash_range(self.client, &self.base, l.as_ref(), h.as_ref()).await?;
            let b = hash::hash_range(self.client, &self.current, l.as_ref(), h.as_ref()).await?;
            if a != b {
                Box::pin(self.bisect(l, h, a.0, d, depth + 1)).await?;
            }
        }
        Ok(())
    }

    /// Compare: `chunks` are the baseline's key-range chunks (from a snapshot or a pass
    /// over the baseline); `base_present` says whether the baseline relation can be read
    /// (else only the differing ranges are listed).
    pub(crate) async fn diff(
        &self,
        chunks: &[ChunkDigest],
        base_rows: u64,
        base_present: bool,
    ) -> Result<TableDiff> {
        let mut d = TableDiff {
            baseline_rows: base_rows,
            ..Default::default()
        };
        let mut differing = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let hi = chunks.get(i + 1).and_then(|n| n.start.clone());
            let now =
                hash::hash_range(self.client, &self.current, c.start.as_ref(), hi.as_ref()).await?;
            d.current_rows += now.0;
            if now != (c.rows, c.digest) {
                differing.push((c.start.clone(), hi, c.rows, now.0));
            }
        }
        if chunks.is_empty() {
            let now = hash::hash_range(self.client, &self.current, None, None).await?;
            d.current_rows = now.0;
            if now.0 > 0 {
                differing.push((None, None, 0, now.0));
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
            for (lo, hi, a, _) in differing.into_iter().take(MAX_RANGES) {
                self.bisect(lo, hi, a, &mut d, 0).await?;
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
