//! The readable diff of two catalog models: [`SchemaModel::diff`] and the differences
//! between two definitions of one table ([`diff_tables`]), as [`SchemaChange`]s.

use super::{ColumnModel, SchemaModel, SequenceModel, TableModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

impl SchemaModel {
    /// The differences that turn `self` into `other`, in a stable order.
    pub fn diff(&self, other: &SchemaModel) -> Vec<SchemaChange> {
        let mut out = Vec::new();
        for s in &other.schemas {
            if !self.schemas.contains(s) {
                out.push(SchemaChange::new("schema", s, Change::Added, None));
            }
        }
        for s in &self.schemas {
            if !other.schemas.contains(s) {
                out.push(SchemaChange::new("schema", s, Change::Removed, None));
            }
        }
        diff_maps(
            &mut out,
            "table",
            &self.tables,
            &other.tables,
            |out, k, a, b| out.extend(diff_tables(k, a, b)),
        );
        diff_maps(
            &mut out,
            "sequence",
            &self.sequences,
            &other.sequences,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "sequence",
                        k,
                        Change::Modified,
                        Some(sequence_detail(a, b)),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "view",
            &self.views,
            &other.views,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "view",
                        k,
                        Change::Modified,
                        Some("definition changed".into()),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "function",
            &self.functions,
            &other.functions,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "function",
                        k,
                        Change::Modified,
                        Some("definition changed".into()),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "enum",
            &self.enums,
            &other.enums,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "enum",
                        k,
                        Change::Modified,
                        Some(format!("labels {:?} -> {:?}", a.labels, b.labels)),
                    ))
                }
            },
        );
        out
    }
}

fn sequence_detail(a: &SequenceModel, b: &SequenceModel) -> String {
    if a.structure_eq(b) {
        format!(
            "value {}{} -> {}{}",
            a.last_value,
            if a.is_called { "" } else { " (not called)" },
            b.last_value,
            if b.is_called { "" } else { " (not called)" }
        )
    } else {
        "definition changed".into()
    }
}

impl SequenceModel {
    fn structure_eq(&self, b: &SequenceModel) -> bool {
        let mut x = self.clone();
        x.last_value = b.last_value;
        x.is_called = b.is_called;
        &x == b
    }
}

fn diff_maps<T: PartialEq>(
    out: &mut Vec<SchemaChange>,
    kind: &'static str,
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
    modified: impl Fn(&mut Vec<SchemaChange>, &str, &T, &T),
) {
    for (k, va) in a {
        match b.get(k) {
            None => out.push(SchemaChange::new(kind, k, Change::Removed, None)),
            Some(vb) => modified(out, k, va, vb),
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(SchemaChange::new(kind, k, Change::Added, None));
        }
    }
}

/// The differences between two definitions of one table (`name` labels them).
pub(crate) fn diff_tables(name: &str, a: &TableModel, b: &TableModel) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str, obj: String, change: Change, detail: Option<String>| {
        out.push(SchemaChange::new(kind, &obj, change, detail))
    };
    let cols_a: BTreeMap<&str, &ColumnModel> =
        a.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let cols_b: BTreeMap<&str, &ColumnModel> =
        b.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    for (n, ca) in &cols_a {
        match cols_b.get(n) {
            None => push(
                "column",
                format!("{name}.{n}"),
                Change::Removed,
                Some(ca.data_type.clone()),
            ),
            Some(cb) if ca != cb => {
                let mut what = Vec::new();
                if ca.data_type != cb.data_type {
                    what.push(format!("type {} -> {}", ca.data_type, cb.data_type));
                }
                if ca.not_null != cb.not_null {
                    what.push(if cb.not_null {
                        "NOT NULL added".to_string()
                    } else {
                        "NOT NULL dropped".to_string()
                    });
                }
                if ca.default != cb.default {
                    what.push(format!("default {:?} -> {:?}", ca.default, cb.default));
                }
                if ca.generated != cb.generated || ca.identity != cb.identity {
                    what.push("generated/identity changed".into());
                }
                if ca.collation != cb.collation {
                    what.push(format!(
                        "collation {:?} -> {:?}",
                        ca.collation, cb.collation
                    ));
                }
                if ca.comment != cb.comment {
                    what.push(format!("comment {:?} -> {:?}", ca.comment, cb.comment));
                }
                if ca.acl != cb.acl {
                    what.push(format!("privileges {:?} -> {:?}", ca.acl, cb.acl));
                }
                if ca.statistics != cb.statistics {
                    what.push(format!(
                        "statistics {:?} -> {:?}",
                        ca.statistics, cb.statistics
                    ));
                }
                if ca.storage != cb.storage || ca.compression != cb.compression {
                    what.push(format!(
                        "storage/compression {:?}/{:?} -> {:?}/{:?}",
                        ca.storage, ca.compression, cb.storage, cb.compression
                    ));
                }
                if ca.options != cb.options {
                    what.push(format!("options {:?} -> {:?}", ca.options, cb.options));
                }
                push(
                    "column",
                    format!("{name}.{n}"),
                    Change::Modified,
                    Some(what.join(", ")),
                )
            }
            _ => {}
        }
    }
    for (n, cb) in &cols_b {
        if !cols_a.contains_key(n) {
            push(
                "column",
                format!("{name}.{n}"),
                Change::Added,
                Some(cb.data_type.clone()),
            );
        }
    }
    if a.column_names() != b.column_names()
        && cols_a.keys().collect::<Vec<_>>() == cols_b.keys().collect::<Vec<_>>()
    {
        push(
            "columns",
            name.to_string(),
            Change::Modified,
            Some("order changed".into()),
        );
    }
    let named = |out: &mut Vec<SchemaChange>,
                 kind: &'static str,
                 xa: Vec<(String, String)>,
                 xb: Vec<(String, String)>| {
        let ma: BTreeMap<String, String> = xa.into_iter().collect();
        let mb: BTreeMap<String, String> = xb.into_iter().collect();
        for (n, da) in &ma {
            match mb.get(n) {
                None => out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Removed,
                    Some(da.clone()),
                )),
                Some(db) if db != da => out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Modified,
                    Some(format!("{da} -> {db}")),
                )),
                _ => {}
            }
        }
        for (n, db) in &mb {
            if !ma.contains_key(n) {
                out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Added,
                    Some(db.clone()),
                ));
            }
        }
    };
    let with_comment = |d: String, c: &Option<String>| match c {
        Some(c) => format!("{d} [comment {c:?}]"),
        None => d,
    };
    let cons = |m: &TableModel| -> Vec<(String, String)> {
        m.constraints
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    with_comment(c.definition.clone(), &c.comment),
                )
            })
            .collect()
    };
    named(&mut out, "constraint", cons(a), cons(b));
    let idx = |m: &TableModel| -> Vec<(String, String)> {
        m.indexes
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    with_comment(
                        format!(
                            "{}{}{}{}{}{}",
                            i.definition,
                            if i.valid { "" } else { " (INVALID)" },
                            if i.clustered { " (CLUSTER ON)" } else { "" },
                            if i.replica_identity {
                                " (REPLICA IDENTITY)"
                            } else {
                                ""
                            },
                            i.tablespace
                                .as_ref()
                                .map(|t| format!(" (TABLESPACE {t})"))
                                .unwrap_or_default(),
                            if i.statistics.is_empty() {
                                String::new()
                            } else {
                                format!(" (STATISTICS {})", i.statistics.join(", "))
                            }
                        ),
                        &i.comment,
                    ),
                )
            })
            .collect()
    };
    named(&mut out, "index", idx(a), idx(b));
    let trg = |m: &TableModel| -> Vec<(String, String)> {
        m.triggers
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    with_comment(format!("{} [{}]", t.definition, t.enabled), &t.comment),
                )
            })
            .collect()
    };
    named(&mut out, "trigger", trg(a), trg(b));
    let rules = |m: &TableModel| -> Vec<(String, String)> {
        m.rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    with_comment(format!("{} [{}]", r.definition, r.enabled), &r.comment),
                )
            })
            .collect()
    };
    named(&mut out, "rule", rules(a), rules(b));
    let policies = |m: &TableModel| -> Vec<(String, String)> {
        m.policies
            .iter()
            .map(|p| (p.name.clone(), format!("{p:?}")))
            .collect()
    };
    named(&mut out, "policy", policies(a), policies(b));
    let stats = |m: &TableModel| -> Vec<(String, String)> {
        m.statistics
            .iter()
            .map(|x| (format!("{}.{}", x.schema, x.name), format!("{x:?}")))
            .collect()
    };
    named(&mut out, "statistics", stats(a), stats(b));
    let pubs = |m: &TableModel| -> Vec<(String, String)> {
        m.publications
            .iter()
            .map(|x| (x.name.clone(), format!("{x:?}")))
            .collect()
    };
    named(&mut out, "publication", pubs(a), pubs(b));
    let seqs = |m: &TableModel| -> BTreeMap<String, SequenceModel> {
        m.sequences
            .iter()
            .map(|s| (format!("{}.{}", s.schema, s.name), s.clone()))
            .collect()
    };
    let (sa, sb) = (seqs(a), seqs(b));
    for (k, x) in &sa {
        match sb.get(k) {
            None => out.push(SchemaChange::new("sequence", k, Change::Removed, None)),
            Some(y) if x != y => out.push(SchemaChange::new(
                "sequence",
                k,
                Change::Modified,
                Some(sequence_detail(x, y)),
            )),
            _ => {}
        }
    }
    for k in sb.keys() {
        if !sa.contains_key(k) {
            out.push(SchemaChange::new("sequence", k, Change::Added, None));
        }
    }
    let props = [
        ("kind", a.kind.clone(), b.kind.clone()),
        ("persistence", a.persistence.clone(), b.persistence.clone()),
        ("owner", a.owner.clone(), b.owner.clone()),
        ("privileges", format!("{:?}", a.acl), format!("{:?}", b.acl)),
        (
            "storage parameters",
            format!("{:?}", a.reloptions),
            format!("{:?}", b.reloptions),
        ),
        (
            "replica identity",
            a.replica_identity.clone(),
            b.replica_identity.clone(),
        ),
        (
            "row level security",
            format!("{:?}", a.rls),
            format!("{:?}", b.rls),
        ),
        (
            "comment",
            format!("{:?}", a.comment),
            format!("{:?}", b.comment),
        ),
        (
            "tablespace",
            format!("{:?}", a.tablespace),
            format!("{:?}", b.tablespace),
        ),
        (
            "access method",
            format!("{:?}", a.access_method),
            format!("{:?}", b.access_method),
        ),
        (
            "type, inheritance and partitioning",
            format!(
                "{:?} {:?} {:?} {:?}",
                a.of_type, a.parents, a.partition_key, a.partition_bound
            ),
            format!(
                "{:?} {:?} {:?} {:?}",
                b.of_type, b.parents, b.partition_key, b.partition_bound
            ),
        ),
        (
            "security labels",
            format!("{:?}", a.security_labels),
            format!("{:?}", b.security_labels),
        ),
    ];
    for (what, x, y) in props {
        if x != y {
            out.push(SchemaChange::new(
                "table",
                name,
                Change::Modified,
                Some(format!("{what} {x} -> {y}")),
            ));
        }
    }
    out
}

/// Added, removed or modified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Present only in the second model.
    Added,
    /// Present only in the first model.
    Removed,
    /// Present in both, different.
    Modified,
}

/// One difference between two catalog models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    /// `table`, `column`, `index`, `constraint`, `trigger`, `sequence`, `view`,
    /// `function`, `enum`, `schema`.
    pub object: String,
    /// Qualified name, e.g. `public.accounts.email`.
    pub name: String,
    /// What happened to it.
    pub change: Change,
    /// Details (types, definitions, values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SchemaChange {
    fn new(object: &str, name: &str, change: Change, detail: Option<String>) -> Self {
        SchemaChange {
            object: object.into(),
            name: name.into(),
            change,
            detail,
        }
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        };
        write!(f, "{} {} {c}", self.object, self.name)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}
