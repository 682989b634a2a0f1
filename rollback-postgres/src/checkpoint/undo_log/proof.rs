//! The parity proof of a [`TableUndoLog`] restore from the changed chunks alone: while the
//! undo log provably saw every write since capture, the rows no log entry names are as
//! they were at capture, so re-hashing the key ranges ("chunks") that hold logged keys and
//! finding each equal to its digest at capture proves the whole table equal to its
//! baseline — in O(rows changed), not O(table). Whenever that cannot be shown from the
//! catalog the proof reads the whole table, and says why.

use super::triggers::read_marks;
use super::{Entry, TableUndoLog, XID};
use crate::catalog::TableModel;
use crate::error::PgResultExt;
use crate::fingerprint::{chunk_starts, table_fingerprint};
use crate::hash::{self, from_hex, Shape};
use crate::ident::quote_ident;
use rollback_core::{Digest, Result};
use tokio_postgres::Transaction;

/// What a proof from the changed chunks found.
pub(super) enum ChunkProof {
    /// Every chunk holding a logged key equals its digest at capture: the table's
    /// fingerprint is the baseline's content under the current definition.
    Proven { fingerprint: Digest, how: String },
    /// Read the whole table instead; with why, when that is worth reporting.
    Full(Option<String>),
}

impl TableUndoLog {
    /// Prove `e`'s table (as `rel` — the table, or a query setting rows aside — under
    /// `model`) from the chunks holding keys logged since capture (`mvcc`: the capture's
    /// MVCC snapshot), in the restore's transaction under its lock.
    pub(super) async fn prove_by_changed_chunks(
        &self,
        tx: &Transaction<'_>,
        mvcc: &str,
        e: &Entry,
        rel: &str,
        model: &TableModel,
    ) -> Result<ChunkProof> {
        if self.full_proof {
            return Ok(ChunkProof::Full(None));
        }
        let (Some(root), Some(then)) = (e.root, &e.marks) else {
            return Ok(ChunkProof::Full(Some(
                "the snapshot holds no chunk digests or catalog marks (captured by an older version, or with the log's triggers not trusted)".into(),
            )));
        };
        if e.chunks.len() < 2 {
            // One chunk: the proof reads the table whatever it does.
            return Ok(ChunkProof::Full(None));
        }
        let now = match read_marks(tx, e).await? {
            Ok(m) => m,
            Err(why) => return Ok(ChunkProof::Full(Some(why))),
        };
        if let Some(why) = now.changed_since(then) {
            return Ok(ChunkProof::Full(Some(why)));
        }
        let key_types: Vec<String> = e
            .key
            .iter()
            .filter_map(|k| e.definition.columns.iter().find(|c| &c.name == k))
            .map(|c| c.data_type.clone())
            .collect();
        // A single integer key is placed among the chunk starts here; any other key by
        // the server's ordering of its type.
        let (starts, (which, keys)) = match integer_starts(&e.chunks, &key_types)? {
            Some((starts, values)) => {
                let found = self.chunks_of_logged_integers(tx, mvcc, e, &values).await?;
                (starts, found)
            }
            None => {
                let Some(starts) = chunk_starts(tx.client(), &e.chunks, &key_types).await? else {
                    return Ok(ChunkProof::Full(None));
                };
                let found = self.chunks_of_logged_keys(tx, mvcc, e, &starts).await?;
                (starts, found)
            }
        };
        if which.len() * 2 > e.chunks.len() {
            return Ok(ChunkProof::Full(Some(format!(
                "{} of {} chunks hold keys logged since capture: read in full",
                which.len(),
                e.chunks.len()
            ))));
        }
        let shape = Shape {
            rel: rel.to_string(),
            columns: model.column_names(),
            key: e.key.clone(),
        };
        let hashed = hash::hash_chosen_ranges(tx.client(), &shape, &starts, &which).await?;
        let mut rows = 0u64;
        for (&i, (n, digest)) in which.iter().zip(&hashed) {
            let c = &e.chunks[i];
            if *n != c.rows || *digest != c.digest {
                return Ok(ChunkProof::Full(Some(format!(
                    "chunk {} of {} differs from its digest at capture ({n} rows, {} at capture): read in full for the actual fingerprint",
                    i + 1,
                    e.chunks.len(),
                    c.rows
                ))));
            }
            rows += n;
        }
        Ok(ChunkProof::Proven {
            fingerprint: table_fingerprint(&e.table, Some(model), Some(root)),
            how: format!(
                "changed chunks: {} of {} re-hashed ({rows} rows, {keys} logged key(s)), the rest by their digests at capture; the undo log saw every write (its triggers always enabled and unchanged since capture, the table not rewritten or truncated)",
                which.len(),
                e.chunks.len()
            ),
        })
    }

    /// [`Self::chunks_of_logged_keys`] for a single integer key whose chunk starts after
    /// the first are `values`: the logged keys read, each placed by a binary search.
    async fn chunks_of_logged_integers(
        &self,
        tx: &Transaction<'_>,
        mvcc: &str,
        e: &Entry,
        values: &[i64],
    ) -> Result<(Vec<usize>, u64)> {
        let sql = logged_since(e, &format!("l.{}::bigint", quote_ident(&e.key[0])));
        let rows = tx
            .query(sql.as_str(), &[&mvcc])
            .await
            .ctx("finding the chunks of the logged keys")?;
        let mut which = std::collections::BTreeSet::new();
        for r in &rows {
            let k: i64 = r.get(0);
            // Chunk `i` holds the keys from `values[i - 1]` up to `values[i]`.
            which.insert(values.partition_point(|&v| v <= k));
        }
        Ok((which.into_iter().collect(), rows.len() as u64))
    }

    /// The chunks (indexes into `e.chunks`; chunk `i` starts at `starts[i - 1]`, chunk 0
    /// at the start of the key order) holding a key logged since capture, and how many
    /// distinct keys were logged: one sort of the chunk starts and the logged keys
    /// together, where each key falls after the last start not above it.
    async fn chunks_of_logged_keys(
        &self,
        tx: &Transaction<'_>,
        mvcc: &str,
        e: &Entry,
        starts: &[hash::Split],
    ) -> Result<(Vec<usize>, u64)> {
        let cols: Vec<String> = (0..e.key.len()).map(|i| format!("c{i}")).collect();
        let values: Vec<String> = starts
            .iter()
            .enumerate()
            .map(|(i, s)| format!("({}, {})", i + 1, s.lits.join(", ")))
            .collect();
        let logged: Vec<String> = e
            .key
            .iter()
            .zip(&cols)
            .map(|(k, c)| format!("l.{} AS {c}", quote_ident(k)))
            .collect();
        let sql = format!(
            "WITH s(n, {cols}) AS (VALUES {values}), l AS ({logged}), \
             u AS (SELECT n, {cols} FROM s UNION ALL SELECT NULL::int, {cols} FROM l) \
             SELECT coalesce(m, 0), count(*) FROM \
               (SELECT n, max(n) OVER (ORDER BY {cols}, n IS NULL ROWS UNBOUNDED PRECEDING) AS m FROM u) x \
             WHERE n IS NULL GROUP BY 1 ORDER BY 1",
            cols = cols.join(", "),
            values = values.join(", "),
            logged = logged_since(e, &logged.join(", ")),
        );
        let rows = tx
            .query(sql.as_str(), &[&mvcc])
            .await
            .ctx("finding the chunks of the logged keys")?;
        let mut which = Vec::new();
        let mut keys = 0u64;
        for r in rows {
            let i: i32 = r.get(0);
            let n: i64 = r.get(1);
            which.push(i.max(0) as usize);
            keys += n.max(0) as u64;
        }
        which.retain(|&i| i < e.chunks.len());
        Ok((which, keys))
    }
}

/// The distinct `columns` (of the log entry alias `l`) of `e`'s log entries written since
/// capture: by transactions the capture's MVCC snapshot (`$1`, text) does not see.
fn logged_since(e: &Entry, columns: &str) -> String {
    format!(
        "SELECT DISTINCT {columns} FROM {log} l \
         WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot)",
        log = e.log.quoted(),
        xid = quote_ident(XID),
    )
}

/// For a single `smallint`, `integer` or `bigint` key: the start keys of `chunks` after the
/// first as splits (typed literals written here) and as values, from their binary (`send`)
/// encoding; `None` for any other key.
fn integer_starts(
    chunks: &[hash::ChunkDigest],
    key_types: &[String],
) -> Result<Option<(Vec<hash::Split>, Vec<i64>)>> {
    let [ty] = key_types else {
        return Ok(None);
    };
    let width = match ty.as_str() {
        "smallint" => 2,
        "integer" => 4,
        "bigint" => 8,
        _ => return Ok(None),
    };
    let mut values = Vec::with_capacity(chunks.len());
    for c in chunks.iter().skip(1) {
        let bytes = match &c.start {
            Some(k) if k.0.len() == 1 => from_hex(&k.0[0])?,
            _ => return Ok(None),
        };
        if bytes.len() != width {
            return Ok(None);
        }
        // Big-endian two's complement, sign-extended.
        let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
        let mut be = [fill; 8];
        be[8 - width..].copy_from_slice(&bytes);
        values.push(i64::from_be_bytes(be));
    }
    if values.windows(2).any(|w| w[0] >= w[1]) {
        return Ok(None);
    }
    let splits = values
        .iter()
        .map(|v| hash::Split {
            lits: vec![format!("'{v}'::{ty}")],
            rank: None,
        })
        .collect();
    Ok(Some((splits, values)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{ChunkDigest, KeyValue};

    fn chunk(start: Option<&str>) -> ChunkDigest {
        ChunkDigest {
            start: start.map(|s| KeyValue(vec![s.to_string()])),
            rows: 1,
            digest: Digest::default(),
        }
    }

    #[test]
    fn integer_starts_decode_signed_big_endian_keys() {
        let ty = |t: &str| vec![t.to_string()];
        let chunks = [
            chunk(None),
            chunk(Some("fffe")),
            chunk(Some("0000")),
            chunk(Some("7fff")),
        ];
        let (splits, values) = integer_starts(&chunks, &ty("smallint")).unwrap().unwrap();
        assert_eq!(values, vec![-2, 0, 32767]);
        assert_eq!(splits[0].lits, vec!["'-2'::smallint".to_string()]);
        let chunks = [
            chunk(None),
            chunk(Some("80000000")),
            chunk(Some("00000005")),
        ];
        let (_, values) = integer_starts(&chunks, &ty("integer")).unwrap().unwrap();
        assert_eq!(values, vec![i32::MIN as i64, 5]);
        let chunks = [
            chunk(None),
            chunk(Some("ffffffffffffffff")),
            chunk(Some("0000000000000100")),
        ];
        let (_, values) = integer_starts(&chunks, &ty("bigint")).unwrap().unwrap();
        assert_eq!(values, vec![-1, 256]);
        // Out of order, the wrong width, or another type: the server places the keys.
        let unordered = [chunk(None), chunk(Some("0005")), chunk(Some("0001"))];
        assert!(integer_starts(&unordered, &ty("smallint"))
            .unwrap()
            .is_none());
        assert!(integer_starts(&chunks, &ty("integer")).unwrap().is_none());
        assert!(integer_starts(&chunks, &ty("numeric")).unwrap().is_none());
        assert!(integer_starts(&chunks, &[]).unwrap().is_none());
    }
}
