//! The delta restore: the live tables are hashed in the key ranges of the chunks stored at
//! capture, and only the ranges that differ are put back from the copy — each first
//! checked against its stored chunk digest, afterwards hashed again — so that the copy is
//! read only where it is used and never changed.

use super::super::{relation_exists, Descriptor, Entry, RestoreMethod, TableSnapshot};
use super::merge::{merge_rows, refuse_cascades};
use super::{definition_mismatch, fk_info};
use crate::catalog::{self, diff_tables, TableModel};
use crate::error::{backend_msg, PgResultExt};
use crate::fingerprint::{chunk_starts, combine, table_fingerprint, SnapshotHasher};
use crate::hash::{self, ChunkDigest, Shape, Split, TableHash, LEAF_ROWS};
use crate::ident::Table;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use rollback_core::{Context, Digest, Discarded, Error, Hasher, Proof, Restored, Result, Snapshot};
use tokio_postgres::{Client, Transaction};

/// A table with fewer rows than this at capture is restored by delta whatever share of it
/// differs (every method is quick on it; trying another costs a second transaction).
const SMALL_TABLE_ROWS: u64 = 8 * LEAF_ROWS;

/// Range hashes each session has in flight (one read, the next ones queued).
const PIPELINE: usize = 3;

/// Rows per run within a range (see [`Block`]): what the delta writes back and re-hashes
/// around a changed row instead of its whole range.
const RUN_ROWS: u64 = 512;

/// A range hashed: its rows and digest as one chunk, and its runs of [`RUN_ROWS`] rows
/// (each with its first key).
struct RangeHash {
    rows: u64,
    digest: Digest,
    runs: Vec<ChunkDigest>,
}

impl RangeHash {
    fn chunk(&self) -> (u64, Digest) {
        (self.rows, self.digest)
    }
}

/// Part of a differing range put back from the copy: the whole range, or — for a single
/// key column — a block of consecutive runs that differ between the live table and the
/// copy (the runs before and after it are equal on both sides, so their rows are).
struct Block {
    range: usize,
    /// The block's lower bound: the least of these keys (the run's first key on each side
    /// that has it); empty: the range's start.
    lo: Vec<String>,
    /// The block's upper bound (exclusive; the first key of the next run, the same on both
    /// sides); `None`: the range's end.
    hi: Option<String>,
    /// What the block hashes to once put back: the copy's runs in it, or — the whole
    /// range — its chunk at capture.
    expect: Expect,
}

enum Expect {
    Chunk(u64, Digest),
    Runs(Vec<(u64, Digest)>),
}

/// The outcome of a delta restore.
pub(super) enum Delta {
    /// Restored and proven.
    Done(Restored),
    /// Not applicable (nothing was changed); the reason.
    Unsuitable(String),
}

/// A table the delta restores: its captured entry and what it is hashed by.
struct Target<'a> {
    entry: &'a Entry,
    def: &'a TableModel,
    copy: &'a Table,
    hash: &'a TableHash,
    /// The start keys of the captured chunks after the first, as SQL literals.
    starts: Vec<Split>,
    /// The key columns' types.
    key_types: Vec<String>,
}

impl Target<'_> {
    /// Range `i`'s rows and digest at capture (an empty table has one empty range).
    fn expected(&self, i: usize) -> (u64, Digest) {
        self.hash
            .chunks
            .get(i)
            .map_or((0, Digest::default()), |c| (c.rows, c.digest))
    }

    fn shape(&self, rel: String) -> Shape {
        Shape {
            rel,
            columns: self.def.column_names(),
            key: self.entry.key.clone(),
        }
    }

    /// `alias`'s key in range `i` (`lo <= key < hi`, as [`hash::hash_ranges`] bounds it).
    fn range_pred(&self, alias: &str, i: usize) -> String {
        let lo = i.checked_sub(1).and_then(|j| self.starts.get(j));
        format!(
            "({})",
            hash::key_range_sql(&self.entry.key, alias, lo, self.starts.get(i))
        )
    }

    /// Range `i` of `rel` (a quoted relation) hashed as one chunk — the stored chunk's
    /// digest when the rows are the captured ones — and in runs.
    async fn hash_range(&self, c: &Client, rel: &Table, i: usize) -> Result<RangeHash> {
        self.hash_where(c, rel, &self.range_pred("r", i)).await
    }

    /// The rows of `rel` (alias `r`) that `pred` selects, hashed as [`Self::hash_range`].
    async fn hash_where(&self, c: &Client, rel: &Table, pred: &str) -> Result<RangeHash> {
        let sub = format!("(SELECT * FROM {} r WHERE {pred})", rel.quoted());
        let (rows, digest, runs) = hash::hash_relation_runs(c, &self.shape(sub), RUN_ROWS).await?;
        Ok(RangeHash { rows, digest, runs })
    }

    /// `alias`'s key in block `b`.
    fn block_pred(&self, alias: &str, b: &Block) -> String {
        let mut p = self.range_pred(alias, b.range);
        if let Some(k) = self.entry.key.first() {
            let col = format!("{alias}.{}", crate::ident::quote_ident(k));
            match b.lo.as_slice() {
                [] => {}
                [one] => p.push_str(&format!(" AND {col} >= {one}")),
                many => p.push_str(&format!(" AND {col} >= LEAST({})", many.join(", "))),
            }
            if let Some(hi) = &b.hi {
                p.push_str(&format!(" AND {col} < {hi}"));
            }
        }
        format!("({p})")
    }

    /// `alias`'s key in any of `blocks`.
    fn blocks_pred(&self, alias: &str, blocks: &[Block]) -> String {
        if blocks.is_empty() {
            return "FALSE".into();
        }
        let parts: Vec<String> = blocks.iter().map(|b| self.block_pred(alias, b)).collect();
        format!("({})", parts.join(" OR "))
    }
}

/// The blocks of consecutive runs at which `live` and `copy` (one range's runs on each
/// side, from the range's first row) differ, as index spans `(first, last)`: a run missing
/// on one side differs.
fn differing_runs(live: &[ChunkDigest], copy: &[ChunkDigest]) -> Vec<(usize, usize)> {
    let same = |j: usize| match (live.get(j), copy.get(j)) {
        (Some(a), Some(b)) => a.rows == b.rows && a.digest == b.digest,
        _ => false,
    };
    let mut out: Vec<(usize, usize)> = Vec::new();
    for j in 0..live.len().max(copy.len()) {
        if same(j) {
            continue;
        }
        match out.last_mut() {
            Some((_, last)) if *last + 1 == j => *last = j,
            _ => out.push((j, j)),
        }
    }
    out
}

impl Target<'_> {
    /// Rows and digest of each of `ranges` of `rel`, in order; each session takes a run
    /// of consecutive ranges (every session must see the same rows) and keeps
    /// [`PIPELINE`] of them sent, so that the server starts the next one without waiting
    /// for a round trip.
    /// Unlike [`hash::hash_ranges`] no whole-table root is stitched (after an insert or a
    /// delete that would read the following ranges again): the chunks alone are compared.
    async fn hash_ranges(
        &self,
        clients: &[&Client],
        rel: &Table,
        ranges: &[usize],
    ) -> Result<Vec<(usize, RangeHash)>> {
        let (n, w) = (ranges.len(), clients.len().max(1));
        let jobs = clients.iter().enumerate().map(|(j, c)| async move {
            let mine = &ranges[n * j / w..n * (j + 1) / w];
            let mut out = Vec::with_capacity(mine.len());
            // A sliding window: a range is sent as soon as one is read.
            let mut window: FuturesOrdered<BoxFuture<'_, Result<RangeHash>>> =
                FuturesOrdered::new();
            let mut next = mine.iter();
            for &i in next.by_ref().take(PIPELINE) {
                window.push_back(Box::pin(self.hash_range(c, rel, i)));
            }
            let mut k = 0;
            while let Some(got) = window.next().await {
                out.push((mine[k], got?));
                k += 1;
                if let Some(&i) = next.next() {
                    window.push_back(Box::pin(self.hash_range(c, rel, i)));
                }
            }
            Ok::<_, Error>(out)
        });
        Ok(futures::future::try_join_all(jobs)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }
}

/// What the delta found in one table: the differing ranges, their rows at capture, and
/// the blocks of them to put back.
struct Found {
    ranges: Vec<usize>,
    rows_then: u64,
    blocks: Vec<Block>,
}

impl TableSnapshot {
    /// Restore by delta where it applies (see [`super::super::RestoreMethod::Delta`]): one
    /// transaction, rolled back unless every table came back proven.
    pub(super) async fn restore_delta(
        &self,
        snap: &Snapshot,
        d: &Descriptor,
        ctx: &Context,
    ) -> Result<Delta> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting restore")?;
        crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
        crate::markers::fence(&tx, crate::markers::DEFAULT_MARKER_SCHEMA, ctx).await?;
        match self.delta_in(&tx, snap, d).await? {
            Delta::Done(r) => {
                tx.commit().await.ctx("committing restore")?;
                let items = r.items_changed.unwrap_or(0);
                ctx.progress(
                    &format!("restore {}", self.resource),
                    items,
                    Some(items),
                    "rows",
                );
                Ok(Delta::Done(r))
            }
            unsuitable => {
                // Release the locks before another method takes them.
                tx.rollback().await.ctx("rolling back restore attempt")?;
                Ok(unsuitable)
            }
        }
    }

    /// The delta in `tx` (fenced); committed by the caller when done.
    async fn delta_in(
        &self,
        tx: &Transaction<'_>,
        snap: &Snapshot,
        d: &Descriptor,
    ) -> Result<Delta> {
        // 1. Every copy present, every table captured present; lock the copies against
        //    writes and the live tables against everything but plain reads (so that the
        //    extra hashing sessions can read them, and nobody else writes meanwhile).
        let (mut copies, mut live) = (Vec::new(), Vec::new());
        for e in &d.tables {
            if let Some(c) = &e.copy {
                if !relation_exists(tx, c).await? {
                    return Ok(Delta::Unsuitable(format!("snapshot copy {c} is missing")));
                }
                copies.push(c.quoted());
            }
            if relation_exists(tx, &e.table).await? {
                live.push(e.table.quoted());
            } else if e.definition.is_some() {
                return Ok(Delta::Unsuitable(format!("{} no longer exists", e.table)));
            }
        }
        for (list, mode, what) in [
            (&mut copies, "SHARE", "locking snapshot copies"),
            (&mut live, "EXCLUSIVE", "locking tables for restore"),
        ] {
            if !list.is_empty() {
                list.sort();
                tx.batch_execute(&format!("LOCK TABLE {} IN {mode} MODE", list.join(", ")))
                    .await
                    .ctx(what)?;
            }
        }
        // 2. Under the locks: the live definitions must be the captured ones (but sequence
        //    values) with the same key, and the copies' definitions and the descriptor must
        //    match the snapshot's digest. The copies' rows are checked where used (4).
        let mut dh = Hasher::new();
        dh.field(b"rollback-postgres/table-copy/v1");
        let mut targets = Vec::new();
        for e in &d.tables {
            let mut actual = e.clone();
            if let (Some(copy), Some(def)) = (&e.copy, &e.definition) {
                let Some(hash) = e
                    .hash
                    .as_ref()
                    .filter(|h| h.rows == 0 || !h.chunks.is_empty())
                else {
                    return Ok(Delta::Unsuitable(format!(
                        "the snapshot of {} has no chunk digests",
                        e.table
                    )));
                };
                if e.key.is_empty() {
                    return Ok(Delta::Unsuitable(format!(
                        "{} has no primary key or NOT NULL unique key to compare ranges by",
                        e.table
                    )));
                }
                let oid = catalog::table_oid(tx, &e.table)
                    .await?
                    .ok_or_else(|| backend_msg("table vanished under its lock"))?;
                let now = catalog::table_model_by_oid(tx, oid).await?;
                if now.structure() != def.structure() {
                    let diff = diff_tables(&e.table.to_string(), def, &now)
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Ok(Delta::Unsuitable(format!(
                        "the definition of {} changed since capture: {diff}",
                        e.table
                    )));
                }
                if catalog::order_key(tx, oid).await? != e.key {
                    return Ok(Delta::Unsuitable(format!(
                        "the key of {} changed since capture",
                        e.table
                    )));
                }
                let copy_def = catalog::table_model(tx, copy)
                    .await?
                    .ok_or_else(|| backend_msg("snapshot copy vanished"))?;
                actual.copy_definition = Some(copy_def.digest());
                let key_types: Vec<String> = e
                    .key
                    .iter()
                    .filter_map(|k| def.columns.iter().find(|c| &c.name == k))
                    .map(|c| c.data_type.clone())
                    .collect();
                let Some(starts) = chunk_starts(tx.client(), &hash.chunks, &key_types).await?
                else {
                    return Ok(Delta::Unsuitable(format!(
                        "the chunk start keys of {} cannot be read back",
                        e.table
                    )));
                };
                targets.push(Target {
                    entry: e,
                    def,
                    copy,
                    hash,
                    starts,
                    key_types,
                });
            }
            actual.digest_part(&mut dh);
        }
        snap.ensure_digest(dh.finish())?;
        // 3–4. Hash the live tables in the captured ranges (on parallel sessions for a big
        //      table), then check each differing range of the copy against its chunk.
        let big = targets.iter().map(|t| t.hash.rows).max().unwrap_or(0) >= hash::PARALLEL_MIN_ROWS;
        let mut hasher = SnapshotHasher::begin(tx, if big { self.parallelism } else { 1 }).await;
        let found = {
            let clients = hasher.clients(&self.db, tx).await;
            let mut found = Vec::new();
            let mut result = hash::range_plans(&clients, true, true).await.map(|()| None);
            for t in &targets {
                if result.is_err() {
                    break;
                }
                match self.differing(&clients, t).await {
                    Ok(Ok(f)) => found.push(f),
                    Ok(Err(why)) => {
                        result = Ok(Some(why));
                        break;
                    }
                    Err(e) => result = Err(e),
                }
            }
            result.map(|why| (found, why))
        };
        hasher.close().await;
        hash::range_plans(&[tx.client()], true, false).await?;
        let found = match found? {
            (_, Some(why)) => return Ok(Delta::Unsuitable(why)),
            (found, None) => found,
        };
        // 5. Put the differing ranges back (a keyed merge limited to them), children's
        //    deletes first, parents' inserts first.
        let mut items = self.drop_absent(tx, d).await?;
        let fks = fk_info(tx, &self.tables).await?;
        let scope = |e: &Entry, alias: &str| {
            targets
                .iter()
                .zip(&found)
                .find(|(t, _)| t.entry.table == e.table)
                .map_or("FALSE".to_string(), |(t, f)| {
                    t.blocks_pred(alias, &f.blocks)
                })
        };
        let present: Vec<&Entry> = targets
            .iter()
            .zip(&found)
            .filter(|(_, f)| !f.ranges.is_empty())
            .map(|(t, _)| t.entry)
            .collect();
        if !present.is_empty() {
            refuse_cascades(tx, &fks, &present, &scope).await?;
            if fks.internal {
                // A row may reference one in another range: all ranges at once, in FK order.
                items += merge_rows(tx, &fks, &present, &scope).await?;
            } else {
                // One block at a time: each statement joins two index range scans, where
                // an OR of the ranges hash-joins bitmap scans of both tables (765 ms
                // against about 15 ms per range for 10 ranges of 32,768 rows).
                let most = found.iter().map(|f| f.blocks.len()).max().unwrap_or(0);
                for k in 0..most {
                    let one = |e: &Entry, alias: &str| {
                        targets
                            .iter()
                            .zip(&found)
                            .find(|(t, _)| t.entry.table == e.table)
                            .and_then(|(t, f)| f.blocks.get(k).map(|b| t.block_pred(alias, b)))
                            .unwrap_or_else(|| "FALSE".to_string())
                    };
                    let present_k: Vec<&Entry> = targets
                        .iter()
                        .zip(&found)
                        .filter(|(_, f)| f.blocks.len() > k)
                        .map(|(t, _)| t.entry)
                        .collect();
                    items += merge_rows(tx, &fks, &present_k, &one).await?;
                }
            }
        }
        // 6. Each block put back, hashed again in this transaction (which alone sees its
        //    writes), must give the copy's runs in it (or, a whole range, its stored
        //    chunk). The copy's ranges were checked against their stored chunks in 4 and
        //    the runs outside the blocks found equal on both sides, so with the ranges
        //    found equal in 3 every chunk of every table is then the captured one.
        hash::range_plans(&[tx.client()], true, true).await?;
        for (t, f) in targets.iter().zip(&found) {
            for b in &f.blocks {
                let now = t
                    .hash_where(tx.client(), &t.entry.table, &t.block_pred("r", b))
                    .await?;
                let same = match &b.expect {
                    Expect::Chunk(rows, digest) => now.chunk() == (*rows, *digest),
                    Expect::Runs(runs) => {
                        now.runs.len() == runs.len()
                            && now
                                .runs
                                .iter()
                                .zip(runs)
                                .all(|(a, b)| (a.rows, a.digest) == *b)
                    }
                };
                if !same {
                    return Ok(Delta::Unsuitable(format!(
                        "range {} of {} still differs after the delta",
                        b.range, t.entry.table
                    )));
                }
            }
        }
        hash::range_plans(&[tx.client()], true, false).await?;
        self.set_sequences(tx, d).await?;
        if let Some(why) = definition_mismatch(tx, d, "delta").await? {
            return Ok(Delta::Unsuitable(why));
        }
        // 7. The proof: every table's content is its captured content, so its root is the
        //    captured root (which the snapshot's digest covers).
        let proof = combine(
            &d.tables
                .iter()
                .map(|e| {
                    table_fingerprint(
                        &e.table,
                        e.definition.as_ref(),
                        e.hash.as_ref().map(|h| h.root),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let summary: Vec<String> = targets
            .iter()
            .zip(&found)
            .map(|(t, f)| {
                let runs: usize = f
                    .blocks
                    .iter()
                    .map(|b| match &b.expect {
                        Expect::Runs(r) => r.len(),
                        Expect::Chunk(..) => 0,
                    })
                    .sum();
                let whole = f
                    .blocks
                    .iter()
                    .filter(|b| matches!(b.expect, Expect::Chunk(..)))
                    .count();
                format!(
                    "{}: {} of {} key range(s) differed ({} row(s) at capture); put back {whole} whole and {runs} run(s) of up to {RUN_ROWS} rows",
                    t.entry.table,
                    f.ranges.len(),
                    t.hash.chunks.len().max(1),
                    f.rows_then
                )
            })
            .collect();
        Ok(Delta::Done(
            Restored::by("delta")
                .changed(items)
                .proof(Proof::of(proof))
                .discarded(Discarded {
                    items,
                    exact: true,
                    includes_run: true,
                    ..Default::default()
                })
                .note(format!("{}; {items} row(s) written", summary.join("; "))),
        ))
    }

    /// The ranges of `t` whose live rows differ from the captured ones, each checked in
    /// the copy against its stored chunk (`Err(DigestMismatch)` when the copy was
    /// altered there); `Ok(Err(why))` when, under [`RestoreMethod::Auto`], so much differs
    /// that another method is cheaper.
    async fn differing(
        &self,
        clients: &[&Client],
        t: &Target<'_>,
    ) -> Result<std::result::Result<Found, String>> {
        let n = t.starts.len() + 1;
        let ranges = t
            .hash_ranges(clients, &t.entry.table, &(0..n).collect::<Vec<_>>())
            .await?;
        let differ: Vec<usize> = ranges
            .iter()
            .filter(|(i, r)| r.chunk() != t.expected(*i))
            .map(|(i, _)| *i)
            .collect();
        if differ.is_empty() {
            return Ok(Ok(Found {
                ranges: Vec::new(),
                rows_then: 0,
                blocks: Vec::new(),
            }));
        }
        let rows_then: u64 = differ.iter().map(|&i| t.expected(i).0).sum();
        // Rows the merge reads on either side: past half the table, a swap is cheaper.
        let work: u64 = differ
            .iter()
            .map(|&i| t.expected(i).0.max(ranges[i].1.rows))
            .sum();
        if self.method == RestoreMethod::Auto
            && t.hash.rows >= SMALL_TABLE_ROWS
            && work * 2 > t.hash.rows
        {
            return Ok(Err(format!(
                "{} of {} key ranges of {} differ ({rows_then} of {} rows at capture): a whole-table method is cheaper",
                differ.len(),
                ranges.len(),
                t.entry.table,
                t.hash.rows
            )));
        }
        // The copy's rows in those ranges (the copy is locked against writes: every
        // session sees the same rows).
        let copies = t.hash_ranges(clients, t.copy, &differ).await?;
        for (i, got) in &copies {
            let (rows, digest) = t.expected(*i);
            if got.chunk() != (rows, digest) {
                tracing::warn!(table = %t.entry.table, range = i, "snapshot copy differs from its stored chunk");
                return Err(Error::DigestMismatch {
                    resource: self.resource.clone(),
                    expected: digest,
                    actual: got.digest,
                });
            }
        }
        let blocks = self.blocks(clients[0], t, &ranges, &copies).await?;
        Ok(Ok(Found {
            ranges: differ,
            rows_then,
            blocks,
        }))
    }

    /// The blocks to put back of each differing range (`copies`, with the live table's
    /// `ranges`): for a single key column, the blocks of runs that differ between the two
    /// sides, bounded by their first keys (printed as literals by the server in one
    /// query); else the whole range.
    async fn blocks(
        &self,
        c: &Client,
        t: &Target<'_>,
        ranges: &[(usize, RangeHash)],
        copies: &[(usize, RangeHash)],
    ) -> Result<Vec<Block>> {
        let whole = |i: usize| {
            let (rows, digest) = t.expected(i);
            Block {
                range: i,
                lo: Vec::new(),
                hi: None,
                expect: Expect::Chunk(rows, digest),
            }
        };
        if t.entry.key.len() != 1 {
            return Ok(copies.iter().map(|(i, _)| whole(*i)).collect());
        }
        // Every key a bound needs, in one list (a leading placeholder: the conversion
        // skips the first chunk's start).
        let mut keys: Vec<ChunkDigest> = vec![ChunkDigest {
            start: None,
            rows: 0,
            digest: Digest::default(),
        }];
        let mut key_of = |run: &ChunkDigest| -> Option<usize> {
            run.start.as_ref()?;
            keys.push(run.clone());
            Some(keys.len() - 2)
        };
        // (range, lower-bound key indexes, upper-bound key index, the copy's runs)
        let mut spans = Vec::new();
        for (i, copy) in copies {
            let live = &ranges[*i].1;
            let found = differing_runs(&live.runs, &copy.runs);
            if found.is_empty() || live.runs.is_empty() || copy.runs.is_empty() {
                spans.push((*i, None));
                continue;
            }
            let mut mine = Vec::new();
            for (first, last) in found {
                let lo: Vec<usize> = if first == 0 {
                    Vec::new()
                } else {
                    [live.runs.get(first), copy.runs.get(first)]
                        .into_iter()
                        .flatten()
                        .filter_map(&mut key_of)
                        .collect()
                };
                // The run after the block is equal on both sides: the same first key.
                let hi = live.runs.get(last + 1).and_then(&mut key_of);
                let expect: Vec<(u64, Digest)> = copy
                    .runs
                    .get(first..=last.min(copy.runs.len().saturating_sub(1)))
                    .unwrap_or_default()
                    .iter()
                    .map(|r| (r.rows, r.digest))
                    .collect();
                mine.push((lo, hi, expect));
            }
            spans.push((*i, Some(mine)));
        }
        let lits = if keys.len() > 1 {
            chunk_starts(c, &keys, &t.key_types).await?
        } else {
            Some(Vec::new())
        };
        let Some(lits) = lits else {
            return Ok(copies.iter().map(|(i, _)| whole(*i)).collect());
        };
        let lit = |k: usize| lits.get(k).and_then(|s| s.lits.first()).cloned();
        let mut out = Vec::new();
        for (i, blocks) in spans {
            match blocks {
                None => out.push(whole(i)),
                Some(blocks) => {
                    for (lo, hi, expect) in blocks {
                        out.push(Block {
                            range: i,
                            lo: lo.into_iter().filter_map(lit).collect(),
                            hi: hi.and_then(lit),
                            expect: Expect::Runs(expect),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rows: u64, d: u8) -> ChunkDigest {
        ChunkDigest {
            start: None,
            rows,
            digest: Digest([d; 32]),
        }
    }

    #[test]
    fn differing_runs_are_grouped_into_blocks() {
        let copy = [
            run(512, 1),
            run(512, 2),
            run(512, 3),
            run(512, 4),
            run(100, 5),
        ];
        // Equal: nothing to put back.
        assert!(differing_runs(&copy, &copy).is_empty());
        // Two updated runs apart, and two adjacent ones.
        let live = [
            run(512, 9),
            run(512, 2),
            run(512, 9),
            run(512, 9),
            run(100, 5),
        ];
        assert_eq!(differing_runs(&live, &copy), vec![(0, 0), (2, 3)]);
        // A row inserted in run 1 shifts every later run: one block to the end.
        let live = [
            run(512, 1),
            run(512, 7),
            run(512, 8),
            run(512, 9),
            run(512, 6),
            run(1, 3),
        ];
        assert_eq!(differing_runs(&live, &copy), vec![(1, 5)]);
        // Rows deleted at the end: the runs the live side lacks differ.
        let live = [run(512, 1), run(512, 2), run(512, 3)];
        assert_eq!(differing_runs(&live, &copy), vec![(3, 4)]);
        // The same digest with another row count differs.
        let live = [
            run(512, 1),
            run(511, 2),
            run(512, 3),
            run(512, 4),
            run(100, 5),
        ];
        assert_eq!(differing_runs(&live, &copy), vec![(1, 1)]);
    }
}
