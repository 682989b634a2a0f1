//! The selective restore's classification: who (the run, or anyone else) changed each
//! key logged since capture, which rows both changed and how they are resolved, and the
//! checks that rows only others wrote come out of the restore untouched.

use super::restore::{restore_error, settable_columns};
use super::{key_match, Descriptor, Entry, OP, PRESENT, SEQ, WRITER, XID};
use crate::error::PgResultExt;
use crate::ident::{column_list, column_list_with, quote_ident, Table};
use rollback_core::Result;
use tokio_postgres::Transaction;

/// Classify every key logged since capture in a temporary table (dropped at commit), one
/// row per key:
/// - the key's image at capture (its table's columns, `_rollback_base_present`);
/// - `_rollback_mig` / `_rollback_app`: whether the run (`run`, the writer recorded with
///   each entry) / anyone else changed it, `_rollback_mig_exist` / `_rollback_app_exist`:
///   its existence;
/// - per column `n`: `_rollback_m{n}` / `_rollback_a{n}` the run / others changed it,
///   `_rollback_s{n}` others set it (an insert sets every column), `_rollback_av{n}` the
///   value others left in it (right after their last change to it);
/// - `_rollback_ae`: whether the row existed right after others' last change to its
///   existence; `_rollback_moved`: the run changed its key, or others moved it away
///   after the run wrote it (either way part of the row's history is under another key,
///   with the other side's writes).
///
/// Each log entry's change is its prior image against the next entry's (the current row
/// for the last).
pub(super) async fn classify(
    tx: &Transaction<'_>,
    d: &Descriptor,
    e: &Entry,
    i: usize,
    run: &str,
) -> Result<Table> {
    let cols = e.definition.column_names();
    let tmp = Table::new("pg_temp", format!("rollback_sel_{i}"));
    let k = |alias: &str| column_list_with(alias, &e.key);
    let present = quote_ident(PRESENT);
    let seq = quote_ident(SEQ);
    let nc = cols.len();
    let lead = cols
        .iter()
        .enumerate()
        .map(|(n, c)| format!("LEAD(l.{}) OVER w AS \"_rollback_n{n}\"", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let cur = cols
        .iter()
        .enumerate()
        .map(|(n, c)| format!("x.{} AS \"_rollback_c{n}\"", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // The value of column n right after entry s's change.
    let after = |a: &str, n: usize| {
        format!(
            "CASE WHEN {a}._rollback_next IS NULL THEN {a}.\"_rollback_c{n}\" ELSE {a}.\"_rollback_n{n}\" END"
        )
    };
    let changed = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "(s.{present} AND s._rollback_after AND pg_catalog.record_image_ne(ROW(s.{c}), ROW({a}))) AS \"_rollback_ch{n}\"",
                c = quote_ident(c),
                a = after("s", n),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let inserted = format!("(NOT st0.{present} AND st0._rollback_after)");
    let exist_changed = |a: &str| format!("({a}.{present} IS DISTINCT FROM {a}._rollback_after)");
    // Window values (the same on every entry of a key): what others left in each column,
    // and whether their last change to its existence left the row there.
    let mut left: Vec<String> = (0..nc)
        .map(|n| {
            format!(
                "first_value({a}) OVER (PARTITION BY {pk} ORDER BY (NOT st0._rollback_mine AND (st0.\"_rollback_ch{n}\" OR {inserted})) DESC, st0.{seq} DESC) AS \"_rollback_av{n}\"",
                a = after("st0", n),
                pk = k("st0"),
            )
        })
        .collect();
    left.push(format!(
        "first_value(st0._rollback_after) OVER (PARTITION BY {pk} ORDER BY (NOT st0._rollback_mine AND {ec}) DESC, st0.{seq} DESC) AS _rollback_ae",
        pk = k("st0"),
        ec = exist_changed("st0"),
    ));
    let any_change = |who: &str| {
        let mut parts = vec![exist_changed("st")];
        parts.extend((0..nc).map(|n| format!("st.\"_rollback_ch{n}\"")));
        format!("bool_or({who} AND ({}))", parts.join(" OR "))
    };
    let per_col = (0..nc)
        .map(|n| {
            format!(
                "bool_or(st._rollback_mine AND st.\"_rollback_ch{n}\") AS \"_rollback_m{n}\", \
                 bool_or(NOT st._rollback_mine AND st.\"_rollback_ch{n}\") AS \"_rollback_a{n}\", \
                 bool_or(NOT st._rollback_mine AND (st.\"_rollback_ch{n}\" OR (NOT st.{present} AND st._rollback_after))) AS \"_rollback_s{n}\""
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let flag_cols = [
        "_rollback_mig",
        "_rollback_app",
        "_rollback_mig_exist",
        "_rollback_app_exist",
        "_rollback_moved",
    ]
    .iter()
    .map(|c| format!("flags.{c}"))
    .chain((0..nc).flat_map(|n| {
        [
            format!("flags.\"_rollback_m{n}\""),
            format!("flags.\"_rollback_a{n}\""),
            format!("flags.\"_rollback_s{n}\""),
        ]
    }))
    .collect::<Vec<_>>()
    .join(", ");
    let avs = (0..nc)
        .map(|n| format!("st.\"_rollback_av{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS \
         WITH l AS MATERIALIZED (SELECT * FROM {log} l WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot)), \
         e AS (SELECT l.*, LEAD(l.{seq}) OVER w AS _rollback_next, LEAD(l.{present}) OVER w AS _rollback_npresent, {lead} \
               FROM l WINDOW w AS (PARTITION BY {lk} ORDER BY l.{seq})), \
         s AS (SELECT e.*, x.ctid IS NOT NULL AS _rollback_cpresent, {cur}, \
                      CASE WHEN e._rollback_next IS NULL THEN x.ctid IS NOT NULL ELSE e._rollback_npresent END AS _rollback_after \
               FROM e LEFT JOIN {t} x ON {xm}), \
         st0 AS (SELECT s.*, {changed}, (s.{writer} IS NOT DISTINCT FROM $2) AS _rollback_mine FROM s s), \
         st AS (SELECT st0.*, {left} FROM st0 st0), \
         flags AS (SELECT {sk}, {mig} AS _rollback_mig, {app} AS _rollback_app, \
                          bool_or(st._rollback_mine AND {ecst}) AS _rollback_mig_exist, \
                          bool_or(NOT st._rollback_mine AND {ecst}) AS _rollback_app_exist, \
                          (bool_or(st.{op} = 'k' AND st._rollback_mine) \
                           OR coalesce(max(st.{seq}) FILTER (WHERE st.{op} = 'k' AND NOT st._rollback_mine) \
                                       > min(st.{seq}) FILTER (WHERE st._rollback_mine), false)) AS _rollback_moved, \
                          {per_col} \
                   FROM st GROUP BY {sk}), \
         base AS (SELECT DISTINCT ON ({sk}) st.{present} AS _rollback_base_present, st._rollback_ae, {bcols}, {avs} \
                  FROM st ORDER BY {sk}, st.{seq}) \
         SELECT base.*, {flag_cols} FROM base JOIN flags ON {fm}",
        log = e.log.quoted(),
        xid = quote_ident(XID),
        lk = k("l"),
        t = e.table.quoted(),
        xm = key_match(e, "x", "e"),
        writer = quote_ident(WRITER),
        op = quote_ident(OP),
        left = left.join(", "),
        sk = k("st"),
        mig = any_change("st._rollback_mine"),
        app = any_change("NOT st._rollback_mine"),
        ecst = exist_changed("st"),
        bcols = column_list_with("st", &cols),
        // Key columns are never NULL: `=` lets the join hash.
        fm = e
            .key
            .iter()
            .map(|c| format!("base.{q} = flags.{q}", q = quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND "),
    );
    tx.execute(sql.as_str(), &[&d.mvcc_snapshot, &run])
        .await
        .ctx(&format!("reading who changed {} since capture", e.table))?;
    // Temporary tables get no statistics otherwise: the joins below need them.
    tx.batch_execute(&format!("ANALYZE {}", tmp.quoted()))
        .await
        .ctx("analyzing the classification")?;
    Ok(tmp)
}

/// How many keys of the classification match `cond`, and up to `cap` of them (text).
pub(super) async fn keyed(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    cond: &str,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let key_text = e.key_text("a");
    let n: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {} a WHERE {cond}", sel.quoted()),
            &[],
        )
        .await
        .ctx("counting classified rows")?
        .get(0);
    let rows = tx
        .query(
            &format!(
                "SELECT concat_ws(', ', {key_text}) FROM {} a WHERE {cond} ORDER BY {} LIMIT $1",
                sel.quoted(),
                column_list_with("a", &e.key)
            ),
            &[&cap],
        )
        .await
        .ctx("listing classified rows")?;
    Ok((
        n.max(0) as u64,
        rows.iter()
            .map(|r| format!("{} key ({})", e.table, r.get::<_, String>(0)))
            .collect(),
    ))
}

/// Rows both the run and others changed: how many, and up to `cap` described (key, and
/// the columns both changed or that both changed the row's existence).
pub(super) async fn conflict_list(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let cols = e.definition.column_names();
    let both: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "CASE WHEN a.\"_rollback_m{n}\" AND a.\"_rollback_a{n}\" THEN {} END",
                crate::ident::quote_literal(c)
            )
        })
        .collect();
    let key_text = e.key_text("a");
    let n: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} a WHERE a._rollback_mig AND a._rollback_app",
                sel.quoted()
            ),
            &[],
        )
        .await
        .ctx("counting conflicts")?
        .get(0);
    let rows = tx
        .query(
            &format!(
                "SELECT concat_ws(', ', {key_text}), concat_ws(', ', {both}), \
                        a._rollback_mig_exist OR a._rollback_app_exist \
                 FROM {} a WHERE a._rollback_mig AND a._rollback_app ORDER BY {} LIMIT $1",
                sel.quoted(),
                column_list_with("a", &e.key),
                both = if both.is_empty() {
                    "NULL".into()
                } else {
                    both.join(", ")
                },
            ),
            &[&cap],
        )
        .await
        .ctx("listing conflicts")?;
    Ok((
        n.max(0) as u64,
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let cols: String = r.get(1);
                let existence: bool = r.get(2);
                let what = match (existence, cols.is_empty()) {
                    (true, _) => "its existence".to_string(),
                    (false, false) => format!("column(s) {cols}"),
                    (false, true) => "different columns".to_string(),
                };
                format!("{} key ({key}): both changed {what}", e.table)
            })
            .collect(),
    ))
}

/// The part of keeping the application's version of rows both changed (see
/// [`resolve_for_others`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolve {
    Delete,
    Update,
    Insert,
}

/// Rows both the run and others changed, resolved for the others: a row exists as it did
/// right after their last change to its existence, or — if they only changed its columns
/// — it exists (their writes need it); each column holds what they left in it, or where
/// they never set it its capture value (the run's, for a row the run added). So the run's
/// changes, before or after theirs, are undone and theirs kept. `Delete`, `Update` and
/// `Insert` do the three parts (deletes children first, the others parents first); a row
/// the run added, others changed and the run deleted again is not brought back.
pub(super) async fn resolve_for_others(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    part: Resolve,
) -> Result<u64> {
    let all = e.definition.column_names();
    // `cur`: the column's current value, for a row the run added (no capture image).
    let value = |c: &String, cur: Option<&str>| {
        let n = all.iter().position(|x| x == c).unwrap_or(0);
        let q = quote_ident(c);
        match cur {
            Some(x) => format!(
                "CASE WHEN a.\"_rollback_s{n}\" THEN a.\"_rollback_av{n}\" WHEN a._rollback_base_present THEN a.{q} ELSE {x}.{q} END"
            ),
            None => format!("CASE WHEN a.\"_rollback_s{n}\" THEN a.\"_rollback_av{n}\" ELSE a.{q} END"),
        }
    };
    let exists = "(NOT a._rollback_app_exist OR a._rollback_ae)";
    let both = "a._rollback_mig AND a._rollback_app";
    let t = e.table.quoted();
    let sql = match part {
        Resolve::Delete => format!(
            "DELETE FROM {t} x USING {s} a WHERE {m} AND {both} AND NOT {exists}",
            s = sel.quoted(),
            m = key_match(e, "x", "a"),
        ),
        Resolve::Update => {
            let settable = settable_columns(e);
            if settable.is_empty() {
                return Ok(0);
            }
            format!(
                "UPDATE {t} x SET ({cols}) = ROW({vals}) FROM {s} a WHERE {m} AND {both} AND {exists} \
                 AND pg_catalog.record_image_ne(ROW({cur}), ROW({want}))",
                cols = column_list(&settable),
                vals = settable
                    .iter()
                    .map(|c| value(c, Some("x")))
                    .collect::<Vec<_>>()
                    .join(", "),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
                cur = column_list_with("x", &settable),
                want = settable
                    .iter()
                    .map(|c| value(c, Some("x")))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        Resolve::Insert => {
            let cols = e.definition.insertable_columns();
            let overriding = if e.definition.columns.iter().any(|c| c.identity == "a") {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            format!(
                "INSERT INTO {t} ({}) {overriding} SELECT {} FROM {s} a WHERE {both} AND {exists} \
                 AND (a._rollback_base_present OR a._rollback_app_exist) \
                 AND NOT EXISTS (SELECT 1 FROM {t} x WHERE {m})",
                column_list(&cols),
                cols.iter()
                    .map(|c| value(c, None))
                    .collect::<Vec<_>>()
                    .join(", "),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
            )
        }
    };
    tx.execute(sql.as_str(), &[])
        .await
        .map_err(|err| restore_error(err, &e.table))
}

/// A copy (temporary, dropped at commit) of the rows only others changed since capture,
/// as they are before the restore.
pub(super) async fn keep_others_rows(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    i: usize,
) -> Result<Table> {
    let copy = Table::new("pg_temp", format!("rollback_kept_{i}"));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {c} ON COMMIT DROP AS SELECT {xc} FROM {t} x JOIN {s} a ON {m} \
         WHERE a._rollback_app AND NOT a._rollback_mig",
        c = copy.quoted(),
        xc = column_list_with("x", &e.definition.column_names()),
        t = e.table.quoted(),
        s = sel.quoted(),
        m = key_match(e, "x", "a"),
    ))
    .await
    .ctx("keeping the rows only others changed")?;
    Ok(copy)
}

/// Rows only others changed that the restore changed after all (compared with their copy
/// by binary image): how many, and up to 20 keys.
pub(super) async fn others_rows_changed(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    copy: &Table,
) -> Result<(u64, Vec<String>)> {
    let cols = e.definition.column_names();
    let first = quote_ident(&e.key[0]);
    let rows = tx
        .query(
            &format!(
                "WITH now AS (SELECT {xc} FROM {t} x JOIN {s} a ON {m} WHERE a._rollback_app AND NOT a._rollback_mig) \
                 SELECT concat_ws(', ', {kk}), concat_ws(', ', {kn}) FROM {c} k FULL JOIN now n ON {kn_match} \
                 WHERE k.{first} IS NULL OR n.{first} IS NULL OR pg_catalog.record_image_ne(ROW({kc}), ROW({nc}))",
                xc = column_list_with("x", &cols),
                t = e.table.quoted(),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
                kk = e.key_text("k"),
                kn = e.key_text("n"),
                c = copy.quoted(),
                kn_match = key_match(e, "k", "n"),
                kc = column_list_with("k", &cols),
                nc = column_list_with("n", &cols),
            ),
            &[],
        )
        .await
        .ctx("checking the rows only others changed")?;
    let keys = rows
        .iter()
        .take(20)
        .map(|r| {
            let k: String = r.get(0);
            let n: String = r.get(1);
            format!("{} key ({})", e.table, if k.is_empty() { n } else { k })
        })
        .collect();
    Ok((rows.len() as u64, keys))
}

/// Keys others (any writer but `run`) logged since capture, for a restore that undoes
/// them all: how many, and up to `cap` of them. Needs no temporary table.
pub(super) async fn logged_by_others(
    tx: &Transaction<'_>,
    d: &Descriptor,
    e: &Entry,
    run: &str,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let key_text = e.key_text("l");
    let rows = tx
        .query(
            &format!(
                "WITH k AS (SELECT DISTINCT {kl} FROM {log} l \
                   WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot) \
                     AND l.{w} IS DISTINCT FROM $2) \
                 SELECT (SELECT count(*) FROM k), \
                        array(SELECT concat_ws(', ', {key_text}) FROM k l ORDER BY {kl} LIMIT $3)",
                kl = column_list_with("l", &e.key),
                log = e.log.quoted(),
                xid = quote_ident(XID),
                w = quote_ident(WRITER),
            ),
            &[&d.mvcc_snapshot, &run, &cap],
        )
        .await
        .ctx("reading whose changes the restore undoes")?;
    let r = &rows[0];
    let n: i64 = r.get(0);
    let keys: Vec<String> = r.get(1);
    Ok((
        n.max(0) as u64,
        keys.into_iter()
            .map(|k| format!("{} key ({k})", e.table))
            .collect(),
    ))
}
