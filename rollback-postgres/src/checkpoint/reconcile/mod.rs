//! Turning a table's live definition back into a captured one with DDL (used by the copy
//! and merge restores of [`crate::TableSnapshot`] and by [`crate::SchemaSnapshot`]): the
//! [`plan`] for its columns, constraints, indexes and triggers, run around the data, and
//! [`properties`], everything else of its definition, made equal afterwards.

mod properties;

pub(crate) use properties::table_properties;

use crate::catalog::{ColumnModel, TableModel};
use crate::ident::{quote_ident, Table};
use crate::triggers::trigger_mode_sql;
use std::collections::{BTreeMap, BTreeSet};

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
