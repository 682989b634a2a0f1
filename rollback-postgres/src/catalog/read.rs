//! Reading the catalog models from the server: a table's model by name or OID, a
//! sequence's, every object of some schemas, and the key a table's rows are ordered by.

use super::{
    ColumnModel, ConstraintModel, EnumModel, FunctionModel, IndexModel, SchemaModel, SequenceModel,
    TableModel, TriggerModel, ViewModel,
};
use crate::error::PgResultExt;
use crate::ident::Table;
use rollback_core::Result;
use tokio_postgres::GenericClient;

/// The OID of a table (`None` when it does not exist).
pub(crate) async fn table_oid<C: GenericClient>(c: &C, t: &Table) -> Result<Option<u32>> {
    let row = c
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&t.schema, &t.name],
        )
        .await
        .ctx("looking up table")?;
    Ok(row.map(|r| r.get::<_, u32>(0)))
}

/// The model of a table, `None` when it does not exist.
pub(crate) async fn table_model<C: GenericClient>(c: &C, t: &Table) -> Result<Option<TableModel>> {
    let Some(oid) = table_oid(c, t).await? else {
        return Ok(None);
    };
    table_model_by_oid(c, oid).await.map(Some)
}

pub(crate) async fn table_model_by_oid<C: GenericClient>(c: &C, oid: u32) -> Result<TableModel> {
    let r = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, \
                    pg_catalog.pg_get_userbyid(c.relowner)::text, \
                    CASE WHEN c.relacl = pg_catalog.acldefault('r', c.relowner) THEN NULL ELSE c.relacl::text END, \
                    coalesce(c.reloptions, '{}')::text[] \
                      || array(SELECT 'toast.' || o FROM pg_catalog.pg_class tc, unnest(tc.reloptions) WITH ORDINALITY x(o, n) \
                               WHERE tc.oid = c.reltoastrelid ORDER BY x.n), \
                    c.relreplident::text, \
                    c.relrowsecurity, c.relforcerowsecurity, \
                    pg_catalog.obj_description(c.oid, 'pg_class'), \
                    (SELECT spcname::text FROM pg_catalog.pg_tablespace WHERE oid = c.reltablespace), \
                    (SELECT amname::text FROM pg_catalog.pg_am WHERE oid = c.relam AND amname <> 'heap'), \
                    CASE WHEN c.reloftype <> 0 THEN pg_catalog.format_type(c.reloftype, NULL) END, \
                    array(SELECT i.inhparent::regclass::text FROM pg_catalog.pg_inherits i \
                          WHERE i.inhrelid = c.oid ORDER BY i.inhseqno), \
                    CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END, \
                    CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END, \
                    pg_catalog.current_setting('server_version_num')::int4 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .ctx("reading table definition")?;
    let mut m = TableModel {
        schema: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        persistence: r.get(3),
        owner: r.get(4),
        acl: r.get(5),
        reloptions: r.get(6),
        replica_identity: r.get(7),
        rls: (r.get(8), r.get(9)),
        columns: vec![],
        constraints: vec![],
        indexes: vec![],
        triggers: vec![],
        sequences: vec![],
        comment: r.get(10),
        tablespace: r.get(11),
        access_method: r.get(12),
        of_type: r.get(13),
        parents: r.get(14),
        partition_key: r.get(15),
        partition_bound: r.get(16),
        rules: vec![],
        policies: vec![],
        statistics: vec![],
        publications: vec![],
        security_labels: vec![],
    };
    let server_version: i32 = r.get(17);
    // The rest in one pipelined round trip: the queries are sent together.
    let cols_sql = format!(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text, \
                    CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END, \
                    pg_catalog.col_description(a.attrelid, a.attnum), a.attacl::text, \
                    CASE WHEN a.attstattarget >= 0 THEN a.attstattarget::int4 END, \
                    CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END, \
                    {compression}, \
                    array(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\\_%') \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            compression = if server_version >= 140000 {
                "NULLIF(a.attcompression::text, '')"
            } else {
                "NULL::text"
            });
    // Rules, policies, extended statistics, publications and security labels, in one
    // round trip (most tables have none).
    let (attrs, qual) = if server_version >= 150000 {
        (
            "CASE WHEN pr.prattrs IS NULL THEN '[]'::jsonb ELSE to_jsonb(array(SELECT a.attname::text \
               FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY x(n, o) JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = pr.prrelid AND a.attnum = x.n ORDER BY x.o)) END",
            "pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)",
        )
    } else {
        ("'[]'::jsonb", "NULL::text")
    };
    let extras_sql = format!(
                "SELECT \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', r.rulename::text, \
                        'definition', pg_catalog.pg_get_ruledef(r.oid), 'enabled', r.ev_enabled::text, \
                        'comment', pg_catalog.obj_description(r.oid, 'pg_rewrite')) ORDER BY r.rulename), '[]') \
                   FROM pg_catalog.pg_rewrite r WHERE r.ev_class = $1 AND r.rulename <> '_RETURN')::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', p.polname::text, 'permissive', p.polpermissive, \
                        'command', CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' \
                                                 WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, \
                        'roles', to_jsonb(array(SELECT CASE WHEN x.r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(x.r)::text END \
                                                FROM unnest(p.polroles) x(r) ORDER BY 1)), \
                        'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                        'with_check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
                        'comment', pg_catalog.obj_description(p.oid, 'pg_policy')) ORDER BY p.polname), '[]') \
                   FROM pg_catalog.pg_policy p WHERE p.polrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('schema', n.nspname::text, 'name', s.stxname::text, \
                        'definition', pg_catalog.pg_get_statisticsobjdef(s.oid), \
                        'target', CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget::int4 END, \
                        'owner', pg_catalog.pg_get_userbyid(s.stxowner)::text, \
                        'comment', pg_catalog.obj_description(s.oid, 'pg_statistic_ext')) ORDER BY n.nspname, s.stxname), '[]') \
                   FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace \
                   WHERE s.stxrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', pb.pubname::text, 'columns', {attrs}, \
                        'row_filter', {qual}) ORDER BY pb.pubname), '[]') \
                   FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication pb ON pb.oid = pr.prpubid \
                   WHERE pr.prrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('column', a.attname::text, 'provider', l.provider, \
                        'label', l.label) ORDER BY l.objsubid, l.provider), '[]') \
                   FROM pg_catalog.pg_seclabel l LEFT JOIN pg_catalog.pg_attribute a \
                     ON a.attrelid = l.objoid AND a.attnum = l.objsubid AND l.objsubid <> 0 \
                   WHERE l.classoid = 'pg_catalog.pg_class'::regclass AND l.objoid = $1)::text"
            );
    let (cols, cons, idxs, trigs, extras, owned) = futures::try_join!(
        async {
            c.query(cols_sql.as_str(), &[&oid])
                .await
                .ctx("reading columns")
        },
        async {
            c.query(
                "SELECT conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid), convalidated, \
                    pg_catalog.obj_description(oid, 'pg_constraint') \
             FROM pg_catalog.pg_constraint WHERE conrelid = $1 ORDER BY conname, contype",
                &[&oid],
            )
            .await
            .ctx("reading constraints")
        },
        async {
            c.query(
                "SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid), \
                    i.indisvalid, pg_catalog.obj_description(i.indexrelid, 'pg_class'), i.indisclustered, \
                    i.indisreplident, \
                    (SELECT spcname::text FROM pg_catalog.pg_tablespace WHERE oid = ic.reltablespace), \
                    array(SELECT a.attnum || '=' || a.attstattarget FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0 ORDER BY a.attnum) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = $1 ORDER BY ic.relname",
                &[&oid],
            )
            .await
            .ctx("reading indexes")
        },
        async {
            c.query(
                "SELECT tgname::text, pg_catalog.pg_get_triggerdef(oid), tgenabled::text, \
                    pg_catalog.obj_description(oid, 'pg_trigger') \
             FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname",
                &[&oid],
            )
            .await
            .ctx("reading triggers")
        },
        async {
            c.query_one(extras_sql.as_str(), &[&oid])
                .await
                .ctx("reading rules, policies, statistics, publications and security labels")
        },
        async {
            c.query(
                "SELECT s.oid, a.attname::text FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass \
               AND d.refobjid = $1 AND d.deptype IN ('a', 'i') ORDER BY s.relname",
                &[&oid],
            )
            .await
            .ctx("reading owned sequences")
        },
    )?;
    for r in cols {
        let generated: String = r.get(4);
        m.columns.push(ColumnModel {
            name: r.get(0),
            data_type: r.get(1),
            not_null: r.get(2),
            // A generated column's expression is its definition, not a default.
            default: r.get(3),
            generated,
            identity: r.get(5),
            collation: r.get(6),
            comment: r.get(7),
            acl: r.get(8),
            statistics: r.get(9),
            storage: r.get(10),
            compression: r.get(11),
            options: r.get(12),
        });
    }
    for r in cons {
        m.constraints.push(ConstraintModel {
            name: r.get(0),
            kind: r.get(1),
            definition: r.get(2),
            validated: r.get(3),
            comment: r.get(4),
        });
    }
    for r in idxs {
        m.indexes.push(IndexModel {
            name: r.get(0),
            definition: r.get(1),
            constraint: r.get(2),
            valid: r.get(3),
            comment: r.get(4),
            clustered: r.get(5),
            replica_identity: r.get(6),
            tablespace: r.get(7),
            statistics: r.get(8),
        });
    }
    for r in trigs {
        m.triggers.push(TriggerModel {
            name: r.get(0),
            definition: r.get(1),
            enabled: r.get(2),
            comment: r.get(3),
        });
    }
    fn parse<T: serde::de::DeserializeOwned>(
        row: &tokio_postgres::Row,
        i: usize,
        what: &str,
    ) -> Result<T> {
        serde_json::from_str(&row.get::<_, String>(i))
            .map_err(|e| crate::error::backend_msg(format!("reading {what}: {e}")))
    }
    m.rules = parse(&extras, 0, "rules")?;
    m.policies = parse(&extras, 1, "policies")?;
    m.statistics = parse(&extras, 2, "statistics")?;
    m.publications = parse(&extras, 3, "publications")?;
    m.security_labels = parse(&extras, 4, "security labels")?;
    for r in owned {
        let mut s = sequence_model(c, r.get(0)).await?;
        s.owned_by = Some(format!("{}.{}", m.name, r.get::<_, String>(1)));
        m.sequences.push(s);
    }
    Ok(m)
}

/// The model of one sequence (by OID), with its current value.
pub(crate) async fn sequence_model<C: GenericClient>(c: &C, oid: u32) -> Result<SequenceModel> {
    let r = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text, s.seqtypid::regtype::text, s.seqstart, s.seqincrement, \
                    s.seqmin, s.seqmax, s.seqcache, s.seqcycle \
             FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE s.seqrelid = $1",
            &[&oid],
        )
        .await
        .ctx("reading sequence")?;
    let mut s = SequenceModel {
        schema: r.get(0),
        name: r.get(1),
        data_type: r.get(2),
        start: r.get(3),
        increment: r.get(4),
        min: r.get(5),
        max: r.get(6),
        cache: r.get(7),
        cycle: r.get(8),
        owned_by: None,
        last_value: 0,
        is_called: false,
    };
    let v = c
        .query_one(
            &format!("SELECT last_value, is_called FROM {}", s.quoted()),
            &[],
        )
        .await
        .ctx("reading sequence value")?;
    s.last_value = v.get(0);
    s.is_called = v.get(1);
    Ok(s)
}

/// The model of the given schemas (those that exist).
pub(crate) async fn schema_model<C: GenericClient>(
    c: &C,
    schemas: &[String],
) -> Result<SchemaModel> {
    let mut m = SchemaModel::default();
    let existing = c
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1) ORDER BY nspname",
            &[&schemas],
        )
        .await
        .ctx("reading schemas")?;
    m.schemas = existing.iter().map(|r| r.get(0)).collect();
    let rels = c
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                    CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'S', 'v', 'm') \
             ORDER BY n.nspname, c.relname",
            &[&schemas],
        )
        .await
        .ctx("reading relations")?;
    let mut owned = std::collections::BTreeSet::new();
    for r in &rels {
        let kind: String = r.get(3);
        if kind == "r" || kind == "p" {
            let t = table_model_by_oid(c, r.get(0)).await?;
            for s in &t.sequences {
                owned.insert(format!("{}.{}", s.schema, s.name));
            }
            m.tables.insert(format!("{}.{}", t.schema, t.name), t);
        }
    }
    for r in &rels {
        let kind: String = r.get(3);
        let key = format!("{}.{}", r.get::<_, String>(1), r.get::<_, String>(2));
        match kind.as_str() {
            "S" if !owned.contains(&key) => {
                let s = sequence_model(c, r.get(0)).await?;
                m.sequences.insert(key, s);
            }
            "v" | "m" => {
                m.views.insert(
                    key,
                    ViewModel {
                        schema: r.get(1),
                        name: r.get(2),
                        materialized: kind == "m",
                        definition: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    },
                );
            }
            _ => {}
        }
    }
    for r in c
        .query(
            "SELECT n.nspname::text, p.proname::text || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
                    pg_catalog.pg_get_functiondef(p.oid) \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = ANY($1) AND p.prokind IN ('f', 'p') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .ctx("reading functions")?
    {
        let f = FunctionModel {
            schema: r.get(0),
            signature: r.get(1),
            definition: r.get(2),
        };
        m.functions.insert(format!("{}.{}", f.schema, f.signature), f);
    }
    for r in c
        .query(
            "SELECT n.nspname::text, t.typname::text, \
                    array(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = ANY($1) AND t.typtype = 'e' ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .ctx("reading enum types")?
    {
        let e = EnumModel {
            schema: r.get(0),
            name: r.get(1),
            labels: r.get(2),
        };
        m.enums.insert(format!("{}.{}", e.schema, e.name), e);
    }
    Ok(m)
}

/// The key a table is ordered by for hashing: its primary key columns, else the columns of
/// its first valid, non-partial unique index on NOT NULL plain columns; empty when none.
pub(crate) async fn order_key<C: GenericClient>(c: &C, oid: u32) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT i.indexrelid, i.indisprimary, \
                    array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.ord), \
                    (SELECT bool_and(a.attnotnull) FROM unnest(i.indkey) k(attnum) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum), \
                    0 = ANY(i.indkey::int2[]) OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
             ORDER BY i.indisprimary DESC, ic.relname",
            &[&oid],
        )
        .await
        .ctx("reading keys")?;
    for r in rows {
        let primary: bool = r.get(1);
        let cols: Vec<String> = r.get(2);
        let not_null: Option<bool> = r.get(3);
        let weird: Option<bool> = r.get(4);
        if primary || (not_null == Some(true) && weird != Some(true) && !cols.is_empty()) {
            return Ok(cols);
        }
    }
    Ok(Vec::new())
}
