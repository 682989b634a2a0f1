//! Turning a table's live definition back into a captured one with DDL (used by the copy
//! and merge restores of [`crate::TableSnapshot`] and by [`crate::SchemaSnapshot`]).

use crate::catalog::{
    self, ColumnModel, PolicyModel, SecurityLabelModel, StatisticsModel, TableModel,
};
use crate::error::{backend_msg, PgResultExt};
use crate::ident::{quote_ident, quote_literal, Table};
use crate::triggers::{rule_mode_sql, trigger_mode_sql};
use rollback_core::Result;
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::GenericClient;

/// DDL to run before and after the data is put back.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reconcile {
    /// Drops, column changes, new columns, sequences (before loading data).
    pub pre: Vec<String>,
    /// Constraints, indexes, foreign keys, triggers, ownership (after loading data).
    pub post: Vec<String>,
}

impl Reconcile {
    pub(crate) fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }
}

fn column_type(c: &ColumnModel) -> String {
    match &c.collation {
        Some(co) => format!("{} COLLATE {}", c.data_type, quote_ident(co)),
        None => c.data_type.clone(),
    }
}

/// The DDL turning `live` into `target` (same table). `empty`: the table is emptied before
/// the data is loaded, so column types may change freely. `Err`: why it cannot be done
/// (column order, identity or generation changes, type changes of a table keeping rows).
pub(crate) fn plan(
    t: &Table,
    live: &TableModel,
    target: &TableModel,
    empty: bool,
) -> std::result::Result<Reconcile, String> {
    let mut r = Reconcile::default();
    let tq = t.quoted();
    // Triggers: drop those that differ or are extra (state differences are set after).
    let tl: BTreeMap<&str, &str> = live
        .triggers
        .iter()
        .map(|x| (x.name.as_str(), x.definition.as_str()))
        .collect();
    let tt: BTreeMap<&str, &str> = target
        .triggers
        .iter()
        .map(|x| (x.name.as_str(), x.definition.as_str()))
        .collect();
    for (n, d) in &tl {
        if tt.get(n) != Some(d) {
            r.pre
                .push(format!("DROP TRIGGER {} ON {tq}", quote_ident(n)));
        }
    }
    // Constraints: drop extra or changed ones, foreign keys first.
    let key = |k: &crate::catalog::ConstraintModel| (k.definition.clone(), k.validated);
    let cl: BTreeMap<&str, _> = live
        .constraints
        .iter()
        .map(|k| (k.name.as_str(), k))
        .collect();
    let ct: BTreeMap<&str, _> = target
        .constraints
        .iter()
        .map(|k| (k.name.as_str(), k))
        .collect();
    let mut drops: Vec<(&str, bool)> = cl
        .iter()
        .filter(|(n, k)| ct.get(*n).map(|x| key(x)) != Some(key(k)))
        .map(|(n, k)| (*n, k.kind == "f"))
        .collect();
    drops.sort_by_key(|(_, fk)| !*fk);
    for (n, _) in &drops {
        r.pre.push(format!(
            "ALTER TABLE {tq} DROP CONSTRAINT {}",
            quote_ident(n)
        ));
    }
    let dropped: BTreeSet<&str> = drops.iter().map(|(n, _)| *n).collect();
    // Plain indexes: drop extra or changed ones (constraint indexes follow constraints).
    let il: BTreeMap<&str, _> = live.indexes.iter().map(|i| (i.name.as_str(), i)).collect();
    let it: BTreeMap<&str, _> = target
        .indexes
        .iter()
        .map(|i| (i.name.as_str(), i))
        .collect();
    for (n, i) in &il {
        if i.constraint {
            continue;
        }
        let same = it
            .get(n)
            .is_some_and(|x| x.definition == i.definition && x.valid && i.valid && !x.constraint);
        if !same {
            r.pre.push(format!(
                "DROP INDEX {}.{}",
                quote_ident(&t.schema),
                quote_ident(n)
            ));
        }
    }
    // Columns.
    let target_names: Vec<&str> = target.columns.iter().map(|c| c.name.as_str()).collect();
    let live_cols: BTreeMap<&str, &ColumnModel> =
        live.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    for c in &live.columns {
        if !target_names.contains(&c.name.as_str()) {
            r.pre.push(format!(
                "ALTER TABLE {tq} DROP COLUMN {}",
                quote_ident(&c.name)
            ));
        }
    }
    let kept: Vec<&str> = live
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| target_names.contains(n))
        .collect();
    if target_names[..kept.len().min(target_names.len())] != kept[..] {
        return Err(format!(
            "the columns of {t} are in another order than at capture ({kept:?} vs {target_names:?})"
        ));
    }
    // Sequences the target's defaults need.
    let live_seqs: BTreeSet<String> = live.sequences.iter().map(|s| s.quoted()).collect();
    for s in &target.sequences {
        if !live_seqs.contains(&s.quoted()) {
            r.pre.push(format!(
                "DO {}",
                crate::ident::dollar_quote(&format!(
                    "BEGIN IF pg_catalog.to_regclass({}) IS NULL THEN EXECUTE {}; END IF; END",
                    crate::ident::quote_literal(&s.quoted()),
                    crate::ident::quote_literal(&s.create_sql())
                ))
            ));
        }
    }
    let mut post_not_null = Vec::new();
    for tc in &target.columns {
        let cq = quote_ident(&tc.name);
        match live_cols.get(tc.name.as_str()) {
            Some(lc) => {
                if lc.generated != tc.generated || lc.identity != tc.identity {
                    return Err(format!(
                        "column {t}.{} changed generation or identity",
                        tc.name
                    ));
                }
                if !tc.generated.is_empty() {
                    if lc.default != tc.default || lc.data_type != tc.data_type {
                        return Err(format!("generated column {t}.{} changed", tc.name));
                    }
                    continue;
                }
                let type_changed = lc.data_type != tc.data_type || lc.collation != tc.collation;
                if type_changed {
                    if !empty {
                        return Err(format!(
                            "column {t}.{} changed type ({} -> {}) and the table keeps its rows",
                            tc.name, tc.data_type, lc.data_type
                        ));
                    }
                    if lc.default.is_some() {
                        r.pre
                            .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} DROP DEFAULT"));
                    }
                    r.pre.push(format!(
                        "ALTER TABLE {tq} ALTER COLUMN {cq} TYPE {} USING NULL",
                        column_type(tc)
                    ));
                }
                if lc.default != tc.default || (type_changed && tc.default.is_some()) {
                    match &tc.default {
                        Some(e) => r.pre.push(format!(
                            "ALTER TABLE {tq} ALTER COLUMN {cq} SET DEFAULT {e}"
                        )),
                        None if !type_changed => r
                            .pre
                            .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} DROP DEFAULT")),
                        None => {}
                    }
                }
                if lc.not_null != tc.not_null && tc.identity.is_empty() {
                    if tc.not_null {
                        if empty {
                            r.pre
                                .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} SET NOT NULL"));
                        } else {
                            post_not_null
                                .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} SET NOT NULL"));
                        }
                    } else {
                        r.pre
                            .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} DROP NOT NULL"));
                    }
                }
            }
            None => {
                if !tc.identity.is_empty() {
                    return Err(format!("identity column {t}.{} is missing", tc.name));
                }
                let mut def = format!("ALTER TABLE {tq} ADD COLUMN {cq} {}", column_type(tc));
                if !tc.generated.is_empty() {
                    def.push_str(&format!(
                        " GENERATED ALWAYS AS ({}) STORED",
                        tc.default.clone().unwrap_or_default()
                    ));
                } else if let Some(e) = &tc.default {
                    def.push_str(&format!(" DEFAULT {e}"));
                }
                if tc.not_null {
                    if empty {
                        def.push_str(" NOT NULL");
                    } else {
                        post_not_null
                            .push(format!("ALTER TABLE {tq} ALTER COLUMN {cq} SET NOT NULL"));
                    }
                }
                r.pre.push(def);
            }
        }
    }
    r.post.extend(post_not_null);
    // Constraints back: keys and checks, then plain indexes, then foreign keys.
    let mut fks = Vec::new();
    for k in &target.constraints {
        let present = cl.get(k.name.as_str()).is_some_and(|x| key(x) == key(k))
            && !dropped.contains(k.name.as_str());
        if present {
            continue;
        }
        let nv = if k.validated { "" } else { " NOT VALID" };
        let add = format!(
            "ALTER TABLE {tq} ADD CONSTRAINT {} {}{nv}",
            quote_ident(&k.name),
            k.body()
        );
        if k.kind == "f" {
            fks.push(add);
        } else {
            r.post.push(add);
        }
    }
    for i in &target.indexes {
        if i.constraint {
            continue;
        }
        let same = il
            .get(i.name.as_str())
            .is_some_and(|x| x.definition == i.definition && x.valid && i.valid && !x.constraint);
        if !same {
            r.post.push(i.definition.clone());
        }
    }
    r.post.extend(fks);
    for tr in &target.triggers {
        if tl.get(tr.name.as_str()) != Some(&tr.definition.as_str()) {
            r.post.push(tr.definition.clone());
        }
        let live_state = live
            .triggers
            .iter()
            .find(|x| x.name == tr.name && x.definition == tr.definition)
            .map(|x| x.enabled.as_str());
        if live_state != Some(tr.enabled.as_str()) {
            r.post.push(trigger_mode_sql(t, &tr.name, &tr.enabled));
        }
    }
    for s in &target.sequences {
        if let Some(owner) = &s.owned_by {
            let col = owner.strip_prefix(&format!("{}.", t.name)).unwrap_or(owner);
            let live_owner = live
                .sequences
                .iter()
                .find(|x| x.quoted() == s.quoted())
                .and_then(|x| x.owned_by.clone());
            if live_owner.as_deref() != Some(owner.as_str()) {
                r.post.push(format!(
                    "ALTER SEQUENCE {} OWNED BY {tq}.{}",
                    s.quoted(),
                    quote_ident(col)
                ));
            }
        }
    }
    Ok(r)
}

/// `name=value` of a storage parameter or attribute option as SQL: `"name" = 'value'`
/// (a `toast.` prefix quoted on its own).
fn option_sql(o: &str) -> String {
    let (name, value) = o.split_once('=').unwrap_or((o, ""));
    format!("{} = {}", option_name(name), quote_literal(value))
}

fn option_name(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn comment_sql(what: &str, value: &Option<String>) -> String {
    format!(
        "COMMENT ON {what} IS {}",
        value
            .as_deref()
            .map(quote_literal)
            .unwrap_or_else(|| "NULL".into())
    )
}

fn storage_keyword(letter: &str) -> &'static str {
    match letter {
        "p" => "PLAIN",
        "e" => "EXTERNAL",
        "m" => "MAIN",
        _ => "EXTENDED",
    }
}

/// `CREATE POLICY` reproducing `p` on `tq`.
fn policy_sql(tq: &str, p: &PolicyModel) -> String {
    let roles = p
        .roles
        .iter()
        .map(|r| {
            if r == "PUBLIC" {
                "PUBLIC".to_string()
            } else {
                quote_ident(r)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE POLICY {} ON {tq} AS {} FOR {} TO {roles}{}{}",
        quote_ident(&p.name),
        if p.permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        },
        match p.command.as_str() {
            "SELECT" => "SELECT",
            "INSERT" => "INSERT",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            _ => "ALL",
        },
        p.using
            .as_ref()
            .map(|e| format!(" USING ({e})"))
            .unwrap_or_default(),
        p.with_check
            .as_ref()
            .map(|e| format!(" WITH CHECK ({e})"))
            .unwrap_or_default(),
    )
}

/// Everything of `t`'s definition besides its columns' shape, constraints, indexes,
/// triggers and owned sequences (which [`plan`] and the restores handle) made equal to
/// `target`'s: owner, storage parameters, tablespace, replica identity, row-level
/// security, comments (on the table, its columns, constraints, indexes, triggers, rules,
/// policies and statistics), column statistics targets, storage, compression and options,
/// clustering, index tablespaces and statistics targets, rules, policies, extended
/// statistics, publication membership, security labels, and the table's and columns'
/// privileges. The live definition is read here, after whatever DDL ran before.
pub(crate) async fn table_properties<C: GenericClient>(
    c: &C,
    t: &Table,
    target: &TableModel,
) -> Result<()> {
    let live = catalog::table_model(c, t)
        .await?
        .ok_or_else(|| backend_msg(format!("{t} vanished while its definition was put back")))?;
    let tq = t.quoted();
    let sq = quote_ident(&t.schema);
    let mut sql = Vec::new();
    if live.owner != target.owner {
        sql.push(format!(
            "ALTER TABLE {tq} OWNER TO {}",
            quote_ident(&target.owner)
        ));
    }
    let reset: Vec<String> = live
        .reloptions
        .iter()
        .filter(|o| !target.reloptions.contains(o))
        .map(|o| option_name(o.split('=').next().unwrap_or(o)))
        .collect();
    if !reset.is_empty() {
        sql.push(format!("ALTER TABLE {tq} RESET ({})", reset.join(", ")));
    }
    if !target.reloptions.is_empty() && target.reloptions != live.reloptions {
        sql.push(format!(
            "ALTER TABLE {tq} SET ({})",
            target
                .reloptions
                .iter()
                .map(|o| option_sql(o))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if live.tablespace != target.tablespace {
        sql.push(format!(
            "ALTER TABLE {tq} SET TABLESPACE {}",
            quote_ident(target.tablespace.as_deref().unwrap_or("pg_default"))
        ));
    }
    let replident_index = |m: &TableModel| {
        m.indexes
            .iter()
            .find(|i| i.replica_identity)
            .map(|i| i.name.clone())
    };
    if live.replica_identity != target.replica_identity
        || replident_index(&live) != replident_index(target)
    {
        match (target.replica_identity.as_str(), replident_index(target)) {
            ("f", _) => sql.push(format!("ALTER TABLE {tq} REPLICA IDENTITY FULL")),
            ("n", _) => sql.push(format!("ALTER TABLE {tq} REPLICA IDENTITY NOTHING")),
            ("i", Some(ix)) => sql.push(format!(
                "ALTER TABLE {tq} REPLICA IDENTITY USING INDEX {}",
                quote_ident(&ix)
            )),
            _ => sql.push(format!("ALTER TABLE {tq} REPLICA IDENTITY DEFAULT")),
        }
    }
    if live.rls.0 != target.rls.0 {
        sql.push(format!(
            "ALTER TABLE {tq} {} ROW LEVEL SECURITY",
            if target.rls.0 { "ENABLE" } else { "DISABLE" }
        ));
    }
    if live.rls.1 != target.rls.1 {
        sql.push(format!(
            "ALTER TABLE {tq} {} ROW LEVEL SECURITY",
            if target.rls.1 { "FORCE" } else { "NO FORCE" }
        ));
    }
    if live.comment != target.comment {
        sql.push(comment_sql(&format!("TABLE {tq}"), &target.comment));
    }
    // Columns.
    for tc in &target.columns {
        let Some(lc) = live.columns.iter().find(|c| c.name == tc.name) else {
            continue;
        };
        let cq = quote_ident(&tc.name);
        if lc.comment != tc.comment {
            sql.push(comment_sql(&format!("COLUMN {tq}.{cq}"), &tc.comment));
        }
        if lc.statistics != tc.statistics {
            sql.push(format!(
                "ALTER TABLE {tq} ALTER COLUMN {cq} SET STATISTICS {}",
                tc.statistics.unwrap_or(-1)
            ));
        }
        if lc.storage != tc.storage {
            let letter = match &tc.storage {
                Some(l) => l.clone(),
                None => c
                    .query_one(
                        "SELECT t.typstorage::text FROM pg_catalog.pg_attribute a \
                         JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                         WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                        &[&tq, &tc.name],
                    )
                    .await
                    .ctx("reading a column type's storage")?
                    .get(0),
            };
            sql.push(format!(
                "ALTER TABLE {tq} ALTER COLUMN {cq} SET STORAGE {}",
                storage_keyword(&letter)
            ));
        }
        if lc.compression != tc.compression {
            sql.push(format!(
                "ALTER TABLE {tq} ALTER COLUMN {cq} SET COMPRESSION {}",
                match tc.compression.as_deref() {
                    Some("p") => "pglz",
                    Some("l") => "lz4",
                    _ => "default",
                }
            ));
        }
        if lc.options != tc.options {
            let reset: Vec<String> = lc
                .options
                .iter()
                .filter(|o| !tc.options.contains(o))
                .map(|o| option_name(o.split('=').next().unwrap_or(o)))
                .collect();
            if !reset.is_empty() {
                sql.push(format!(
                    "ALTER TABLE {tq} ALTER COLUMN {cq} RESET ({})",
                    reset.join(", ")
                ));
            }
            if !tc.options.is_empty() {
                sql.push(format!(
                    "ALTER TABLE {tq} ALTER COLUMN {cq} SET ({})",
                    tc.options
                        .iter()
                        .map(|o| option_sql(o))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    // Constraints, indexes and triggers that exist: their comments and properties.
    for tk in &target.constraints {
        if let Some(lk) = live.constraints.iter().find(|k| k.name == tk.name) {
            if lk.comment != tk.comment {
                sql.push(comment_sql(
                    &format!("CONSTRAINT {} ON {tq}", quote_ident(&tk.name)),
                    &tk.comment,
                ));
            }
        }
    }
    for ti in &target.indexes {
        let Some(li) = live.indexes.iter().find(|i| i.name == ti.name) else {
            continue;
        };
        let iq = format!("{sq}.{}", quote_ident(&ti.name));
        if li.comment != ti.comment {
            sql.push(comment_sql(&format!("INDEX {iq}"), &ti.comment));
        }
        if li.tablespace != ti.tablespace {
            sql.push(format!(
                "ALTER INDEX {iq} SET TABLESPACE {}",
                quote_ident(ti.tablespace.as_deref().unwrap_or("pg_default"))
            ));
        }
        if li.statistics != ti.statistics {
            let target_of = |m: &[String], col: &str| {
                m.iter().find_map(|x| {
                    x.split_once('=')
                        .filter(|(c, _)| *c == col)
                        .map(|(_, v)| v.to_string())
                })
            };
            let mut cols: Vec<&str> = li
                .statistics
                .iter()
                .chain(ti.statistics.iter())
                .filter_map(|x| x.split('=').next())
                .collect();
            cols.sort();
            cols.dedup();
            for col in cols {
                let n: i32 = match target_of(&ti.statistics, col) {
                    Some(v) => v.parse().unwrap_or(-1),
                    None => -1,
                };
                let col: i32 = col.parse().unwrap_or(0);
                if col > 0 {
                    sql.push(format!(
                        "ALTER INDEX {iq} ALTER COLUMN {col} SET STATISTICS {n}"
                    ));
                }
            }
        }
    }
    let clustered = |m: &TableModel| {
        m.indexes
            .iter()
            .find(|i| i.clustered)
            .map(|i| i.name.clone())
    };
    if clustered(&live) != clustered(target) {
        match clustered(target) {
            Some(ix) => sql.push(format!("ALTER TABLE {tq} CLUSTER ON {}", quote_ident(&ix))),
            None => sql.push(format!("ALTER TABLE {tq} SET WITHOUT CLUSTER")),
        }
    }
    for tt in &target.triggers {
        if let Some(lt) = live.triggers.iter().find(|x| x.name == tt.name) {
            if lt.comment != tt.comment {
                sql.push(comment_sql(
                    &format!("TRIGGER {} ON {tq}", quote_ident(&tt.name)),
                    &tt.comment,
                ));
            }
        }
    }
    // Rules.
    for lr in &live.rules {
        if !target
            .rules
            .iter()
            .any(|r| r.name == lr.name && r.definition == lr.definition)
        {
            sql.push(format!("DROP RULE {} ON {tq}", quote_ident(&lr.name)));
        }
    }
    for tr in &target.rules {
        let lr = live
            .rules
            .iter()
            .find(|r| r.name == tr.name && r.definition == tr.definition);
        if lr.is_none() {
            sql.push(tr.definition.trim_end_matches(';').to_string());
        }
        if lr.map(|r| r.enabled.as_str()).unwrap_or("O") != tr.enabled {
            sql.push(rule_mode_sql(&tq, &tr.name, &tr.enabled));
        }
        if lr.and_then(|r| r.comment.clone()) != tr.comment {
            sql.push(comment_sql(
                &format!("RULE {} ON {tq}", quote_ident(&tr.name)),
                &tr.comment,
            ));
        }
    }
    // Policies.
    let same_policy = |a: &PolicyModel, b: &PolicyModel| {
        let mut a = a.clone();
        a.comment = b.comment.clone();
        &a == b
    };
    for lp in &live.policies {
        if !target.policies.iter().any(|p| same_policy(p, lp)) {
            sql.push(format!("DROP POLICY {} ON {tq}", quote_ident(&lp.name)));
        }
    }
    for tp in &target.policies {
        let lp = live.policies.iter().find(|p| same_policy(p, tp));
        if lp.is_none() {
            sql.push(policy_sql(&tq, tp));
        }
        if lp.and_then(|p| p.comment.clone()) != tp.comment {
            sql.push(comment_sql(
                &format!("POLICY {} ON {tq}", quote_ident(&tp.name)),
                &tp.comment,
            ));
        }
    }
    // Extended statistics.
    let stat_name =
        |x: &StatisticsModel| format!("{}.{}", quote_ident(&x.schema), quote_ident(&x.name));
    for ls in &live.statistics {
        if !target
            .statistics
            .iter()
            .any(|x| x.schema == ls.schema && x.name == ls.name && x.definition == ls.definition)
        {
            sql.push(format!("DROP STATISTICS {}", stat_name(ls)));
        }
    }
    for ts in &target.statistics {
        let ls = live
            .statistics
            .iter()
            .find(|x| x.schema == ts.schema && x.name == ts.name && x.definition == ts.definition);
        if ls.is_none() {
            sql.push(ts.definition.clone());
        }
        if ls.map(|x| x.target).unwrap_or(None) != ts.target {
            sql.push(format!(
                "ALTER STATISTICS {} SET STATISTICS {}",
                stat_name(ts),
                ts.target.unwrap_or(-1)
            ));
        }
        if ls.map(|x| x.owner.as_str()) != Some(ts.owner.as_str()) {
            sql.push(format!(
                "ALTER STATISTICS {} OWNER TO {}",
                stat_name(ts),
                quote_ident(&ts.owner)
            ));
        }
        if ls.and_then(|x| x.comment.clone()) != ts.comment {
            sql.push(comment_sql(
                &format!("STATISTICS {}", stat_name(ts)),
                &ts.comment,
            ));
        }
    }
    // Publications.
    for lp in &live.publications {
        if !target.publications.contains(lp) {
            sql.push(format!(
                "ALTER PUBLICATION {} DROP TABLE {tq}",
                quote_ident(&lp.name)
            ));
        }
    }
    for tp in &target.publications {
        if !live.publications.contains(tp) {
            let cols = if tp.columns.is_empty() {
                String::new()
            } else {
                format!(" ({})", crate::ident::column_list(&tp.columns))
            };
            let filter = tp
                .row_filter
                .as_ref()
                .map(|f| format!(" WHERE ({f})"))
                .unwrap_or_default();
            sql.push(format!(
                "ALTER PUBLICATION {} ADD TABLE {tq}{cols}{filter}",
                quote_ident(&tp.name)
            ));
        }
    }
    // Security labels.
    let label_target = |l: &SecurityLabelModel| match &l.column {
        Some(col) => format!("COLUMN {tq}.{}", quote_ident(col)),
        None => format!("TABLE {tq}"),
    };
    for ll in &live.security_labels {
        if !target
            .security_labels
            .iter()
            .any(|l| l.column == ll.column && l.provider == ll.provider)
        {
            sql.push(format!(
                "SECURITY LABEL FOR {} ON {} IS NULL",
                quote_ident(&ll.provider),
                label_target(ll)
            ));
        }
    }
    for tl in &target.security_labels {
        if !live.security_labels.contains(tl) {
            sql.push(format!(
                "SECURITY LABEL FOR {} ON {} IS {}",
                quote_ident(&tl.provider),
                label_target(tl),
                quote_literal(&tl.label)
            ));
        }
    }
    for s in &sql {
        c.batch_execute(s).await.ctx("restoring table properties")?;
    }
    // Privileges: the table's, then its columns' (revoking a table privilege revokes it on
    // every column too).
    if live.acl != target.acl {
        let mut grantees: Vec<String> = match &live.acl {
            Some(acl) => grantees_of(c, acl).await?,
            None => vec![],
        };
        grantees.push("PUBLIC".into());
        grantees.push(quote_ident(&target.owner));
        grantees.sort();
        grantees.dedup();
        for g in &grantees {
            c.batch_execute(&format!("REVOKE ALL ON {tq} FROM {g}"))
                .await
                .ctx("resetting privileges")?;
        }
        match &target.acl {
            Some(acl) => grant(c, acl, &format!("ON {tq}"), "").await?,
            // The owner's default privileges (what a NULL acl means).
            None => c
                .batch_execute(&format!(
                    "GRANT ALL ON {tq} TO {}",
                    quote_ident(&target.owner)
                ))
                .await
                .ctx("restoring privileges")?,
        }
    }
    let now: Vec<(String, Option<String>)> = c
        .query(
            "SELECT attname::text, attacl::text FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&tq],
        )
        .await
        .ctx("reading column privileges")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for tc in &target.columns {
        let Some((_, current)) = now.iter().find(|(n, _)| n == &tc.name) else {
            continue;
        };
        if current == &tc.acl {
            continue;
        }
        let cq = quote_ident(&tc.name);
        if let Some(acl) = current {
            for g in grantees_of(c, acl).await? {
                c.batch_execute(&format!("REVOKE ALL ({cq}) ON {tq} FROM {g}"))
                    .await
                    .ctx("resetting column privileges")?;
            }
        }
        if let Some(acl) = &tc.acl {
            grant(c, acl, &format!("ON {tq}"), &format!(" ({cq})")).await?;
        }
    }
    Ok(())
}

/// The grantees of an ACL (text), quoted (`PUBLIC` for everyone).
async fn grantees_of<C: GenericClient>(c: &C, acl: &str) -> Result<Vec<String>> {
    Ok(c.query(
        "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                    ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END \
             FROM pg_catalog.aclexplode($1::text::pg_catalog.aclitem[]) a",
        &[&acl],
    )
    .await
    .ctx("reading privileges")?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Grant what an ACL (text) holds, `on` the object (`columns`: ` (col)` or empty).
async fn grant<C: GenericClient>(c: &C, acl: &str, on: &str, columns: &str) -> Result<()> {
    let grants: Vec<(String, String, bool)> = c
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                    ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END, \
                    a.privilege_type, a.is_grantable \
             FROM pg_catalog.aclexplode($1::text::pg_catalog.aclitem[]) a",
            &[&acl],
        )
        .await
        .ctx("reading captured privileges")?
        .iter()
        .map(|g| (g.get(0), g.get(1), g.get(2)))
        .collect();
    for (grantee, privilege, grantable) in grants {
        // privilege_type is one of PostgreSQL's keywords (SELECT, INSERT…).
        if !privilege
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch == ' ')
        {
            return Err(backend_msg(format!("unexpected privilege {privilege:?}")));
        }
        c.batch_execute(&format!(
            "GRANT {privilege}{columns} {on} TO {grantee}{}",
            if grantable { " WITH GRANT OPTION" } else { "" }
        ))
        .await
        .ctx("restoring privileges")?;
    }
    Ok(())
}
