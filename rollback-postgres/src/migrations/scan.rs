//! What a migration file does, read with the crate's SQL scanner: its statements with
//! their line numbers, a whole-file `BEGIN … COMMIT` wrapper, and the tables it touches.

use super::MigrationError;
use crate::ident::Table;
use crate::sqlscan;
use std::collections::BTreeSet;
use std::path::Path;

/// One statement of a file and the line (1-based, in the file) its first word is on.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub st: sqlscan::Statement,
    pub line: usize,
}

/// Split `sql` (which starts on line `first_line` of its file) into statements with
/// their line numbers.
pub(crate) fn locate(sql: &str, first_line: usize) -> Vec<Located> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for st in sqlscan::split(sql) {
        let at = sql[pos..].find(&st.text).map(|i| pos + i).unwrap_or(pos);
        // The first word, past leading comments and blanks.
        let start = first_word_offset(&st.text);
        let line = first_line + sql[..at + start].matches('\n').count();
        pos = at + st.text.len();
        out.push(Located { st, line });
    }
    out
}

fn first_word_offset(text: &str) -> usize {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            match text[i + 2..].find("*/") {
                Some(j) => i += j + 4,
                None => return i,
            }
        } else {
            return i;
        }
    }
    0
}

/// `sql` without a whole-file transaction wrapper (`BEGIN;` or `START TRANSACTION;` first
/// and `COMMIT;` or `END;` last), which the step's own transaction replaces. Any other
/// transaction control is refused, naming the file and line.
pub(crate) fn unwrap_transaction(
    file: &Path,
    sql: &str,
    first_line: usize,
) -> Result<String, MigrationError> {
    unwrap_wrapper(file, sql, first_line, false)
}

/// As [`unwrap_transaction`]; with `rollback`, a closing `ROLLBACK` also ends the wrapper
/// (sqitch's verify scripts).
pub(crate) fn unwrap_wrapper(
    file: &Path,
    sql: &str,
    first_line: usize,
    rollback: bool,
) -> Result<String, MigrationError> {
    let sts = locate(sql, first_line);
    let is_control = |l: &Located| sqlscan::transaction_control(&l.st);
    let opens = |l: &Located| {
        let w = &l.st.words;
        (w.first().map(String::as_str) == Some("BEGIN")
            && w.iter()
                .skip(1)
                .all(|x| matches!(x.as_str(), "TRANSACTION" | "WORK")))
            || (w.len() == 2 && w[0] == "START" && w[1] == "TRANSACTION")
    };
    let closes = |l: &Located| {
        let w = &l.st.words;
        (matches!(w.first().map(String::as_str), Some("COMMIT" | "END"))
            || (rollback && w.first().map(String::as_str) == Some("ROLLBACK")))
            && w.iter()
                .skip(1)
                .all(|x| matches!(x.as_str(), "TRANSACTION" | "WORK"))
    };
    let wrapped = sts.len() >= 2 && opens(&sts[0]) && closes(&sts[sts.len() - 1]);
    let inner: &[Located] = if wrapped {
        &sts[1..sts.len() - 1]
    } else {
        &sts[..]
    };
    if let Some(bad) = inner.iter().find(|l| is_control(l)) {
        return Err(MigrationError::TransactionControl {
            file: file.to_path_buf(),
            line: bad.line,
            statement: short(&bad.st.text),
        });
    }
    if !wrapped {
        return Ok(sql.to_string());
    }
    Ok(inner
        .iter()
        .map(|l| format!("{};", l.st.text))
        .collect::<Vec<_>>()
        .join("\n"))
}

pub(crate) fn short(s: &str) -> String {
    let one = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one.chars().take(80).collect();
    if one.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A token of a statement: a keyword (upper-cased) or an identifier (as the server reads
/// it: folded to lower case unless double-quoted), or punctuation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word { upper: String, ident: String },
    Quoted(String),
    Dot,
    Other,
}

fn tokens(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '-' && c.get(i + 1) == Some(&'-') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if ch == '\'' {
            i += 1;
            while i < c.len() {
                if c[i] == '\'' && c.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if c[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            out.push(Tok::Other);
        } else if ch == '"' {
            let mut s = String::new();
            i += 1;
            while i < c.len() {
                if c[i] == '"' && c.get(i + 1) == Some(&'"') {
                    s.push('"');
                    i += 2;
                } else if c[i] == '"' {
                    break;
                } else {
                    s.push(c[i]);
                    i += 1;
                }
            }
            i += 1;
            out.push(Tok::Quoted(s));
        } else if ch == '$' {
            // A dollar-quoted body: nothing in it names a table for this scan.
            let mut j = i + 1;
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            if j < c.len() && c[j] == '$' {
                let tag: Vec<char> = c[i..=j].to_vec();
                i = j + 1;
                while i < c.len() && !c[i..].starts_with(&tag) {
                    i += 1;
                }
                i += tag.len();
                out.push(Tok::Other);
            } else {
                i = j;
                out.push(Tok::Other);
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let mut s = String::new();
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                s.push(c[i]);
                i += 1;
            }
            out.push(Tok::Word {
                upper: s.to_uppercase(),
                ident: s.to_lowercase(),
            });
        } else if ch == '.' {
            out.push(Tok::Dot);
            i += 1;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Other);
            }
            i += 1;
        }
    }
    out
}

/// The schema of a name written without one: the scan cannot know it (it depends on the
/// session's search path); [`Touch::resolve`] replaces it.
pub(crate) const UNQUALIFIED: &str = "";

/// Where unqualified names go under a session's search path, as the server resolves them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchPath {
    /// The existing schemas of the search path, in order (`current_schemas(false)`); the
    /// first is where `CREATE` puts an unqualified object.
    pub schemas: Vec<String>,
}

impl SearchPath {
    /// `t` with its schema: as given when qualified; else the first schema of the path
    /// holding a table of that name among `existing` (or created earlier in the plan),
    /// else the schema new objects go to.
    pub(crate) fn table(&self, t: &Table, known: &dyn Fn(&Table) -> bool) -> Table {
        if t.schema != UNQUALIFIED {
            return t.clone();
        }
        self.schemas
            .iter()
            .map(|s| Table::new(s.clone(), t.name.clone()))
            .find(|c| known(c))
            .unwrap_or_else(|| Table::new(self.creation_schema(), t.name.clone()))
    }

    /// The schema unqualified new objects go to (`public` when the path has none: the
    /// statement itself then fails).
    pub(crate) fn creation_schema(&self) -> String {
        self.schemas
            .first()
            .cloned()
            .unwrap_or_else(|| "public".into())
    }
}

/// What one statement does to tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Touch {
    /// Tables whose rows it writes (INSERT, UPDATE, DELETE, TRUNCATE, COPY … FROM).
    pub data: BTreeSet<Table>,
    /// Tables it creates.
    pub created: BTreeSet<Table>,
    /// Tables it drops or truncates (their rows are gone: a copy is the cover).
    pub emptied: BTreeSet<Table>,
    /// Tables whose definition it changes (`ALTER TABLE`, an index on them).
    pub altered: BTreeSet<Table>,
    /// Schemas whose structure it changes (CREATE, ALTER, DROP, COMMENT, RENAME…).
    pub structure: BTreeSet<String>,
    /// Whether the statement is one this scan cannot see into (`DO`, a function call…).
    pub opaque: bool,
}

impl Touch {
    /// The same, with every unqualified name given the schema the server would resolve it
    /// to (see [`SearchPath::table`]).
    pub(crate) fn resolve(self, path: &SearchPath, known: &dyn Fn(&Table) -> bool) -> Touch {
        let tables = |set: BTreeSet<Table>| -> BTreeSet<Table> {
            set.iter().map(|t| path.table(t, known)).collect()
        };
        let (altered, emptied) = (tables(self.altered), tables(self.emptied));
        // The structure of a table altered or dropped by an unqualified name changes in
        // the schema that name resolves to.
        let mut structure: BTreeSet<String> = altered
            .iter()
            .chain(emptied.iter())
            .filter(|_| self.structure.contains(UNQUALIFIED))
            .map(|t| t.schema.clone())
            .collect();
        structure.extend(self.structure.into_iter().map(|s| {
            if s == UNQUALIFIED {
                path.creation_schema()
            } else {
                s
            }
        }));
        Touch {
            data: tables(self.data),
            created: self
                .created
                .iter()
                .map(|t| {
                    if t.schema == UNQUALIFIED {
                        Table::new(path.creation_schema(), t.name.clone())
                    } else {
                        t.clone()
                    }
                })
                .collect(),
            emptied,
            altered,
            structure,
            opaque: self.opaque,
        }
    }

    pub(crate) fn merge(&mut self, o: Touch) {
        self.data.extend(o.data);
        self.created.extend(o.created);
        self.emptied.extend(o.emptied);
        self.altered.extend(o.altered);
        self.structure.extend(o.structure);
        self.opaque |= o.opaque;
    }
}

fn is_kw(t: Option<&Tok>, kw: &str) -> bool {
    matches!(t, Some(Tok::Word { upper, .. }) if upper == kw)
}

/// Read a possibly schema-qualified name at `i`; returns the table and the index after it.
fn name_at(t: &[Tok], i: usize) -> Option<(Table, usize)> {
    let part = |k: usize| match t.get(k) {
        Some(Tok::Word { ident, .. }) => Some(ident.clone()),
        Some(Tok::Quoted(s)) => Some(s.clone()),
        _ => None,
    };
    let first = part(i)?;
    if matches!(t.get(i + 1), Some(Tok::Dot)) {
        let second = part(i + 2)?;
        Some((Table::new(first, second), i + 3))
    } else {
        Some((Table::new(UNQUALIFIED, first), i + 1))
    }
}

fn skip(t: &[Tok], mut i: usize, kws: &[&str]) -> usize {
    while kws.iter().any(|k| is_kw(t.get(i), k)) {
        i += 1;
    }
    i
}

/// The tables a statement touches, and how.
pub(crate) fn touch(text: &str) -> Touch {
    let t = tokens(text);
    let mut out = Touch::default();
    let kw = |i: usize| match t.get(i) {
        Some(Tok::Word { upper, .. }) => upper.as_str(),
        _ => "",
    };
    // WITH … : look at the statement after the CTEs too, by scanning for DML keywords.
    match kw(0) {
        "CREATE" => {
            let mut i = skip(&t, 1, &["OR", "REPLACE", "GLOBAL", "LOCAL", "UNLOGGED"]);
            if matches!(kw(i), "TEMP" | "TEMPORARY") {
                return out;
            }
            if kw(i) == "TABLE" {
                i = skip(&t, i + 1, &["IF", "NOT", "EXISTS"]);
                if let Some((tb, _)) = name_at(&t, i) {
                    out.structure.insert(tb.schema.clone());
                    out.created.insert(tb);
                }
                return out;
            }
            // CREATE [UNIQUE] INDEX … ON [ONLY] table
            if let Some(on) = t.iter().position(|x| is_kw(Some(x), "ON")) {
                if matches!(kw(i), "UNIQUE" | "INDEX") {
                    let j = skip(&t, on + 1, &["ONLY"]);
                    if let Some((tb, _)) = name_at(&t, j) {
                        out.structure.insert(tb.schema.clone());
                        out.altered.insert(tb);
                        return out;
                    }
                }
            }
            out.structure.insert(schema_of_object(&t, i + 1));
        }
        "ALTER" => {
            if kw(1) == "TABLE" {
                let i = skip(&t, 2, &["IF", "EXISTS", "ONLY"]);
                if let Some((tb, _)) = name_at(&t, i) {
                    out.structure.insert(tb.schema.clone());
                    out.altered.insert(tb);
                    return out;
                }
            }
            out.structure.insert(schema_of_object(&t, 2));
        }
        "DROP" => {
            if kw(1) == "TABLE" {
                let mut i = skip(&t, 2, &["IF", "EXISTS"]);
                while let Some((tb, next)) = name_at(&t, i) {
                    out.structure.insert(tb.schema.clone());
                    out.emptied.insert(tb);
                    if matches!(t.get(next), Some(Tok::Other)) {
                        i = next + 1;
                    } else {
                        break;
                    }
                }
                return out;
            }
            out.structure.insert(schema_of_object(&t, 2));
        }
        "COMMENT" | "GRANT" | "REVOKE" => {
            out.structure.insert(UNQUALIFIED.into());
        }
        "TRUNCATE" => {
            let mut i = skip(&t, 1, &["TABLE", "ONLY"]);
            while let Some((tb, next)) = name_at(&t, i) {
                if matches!(kw(i), "RESTART" | "CONTINUE" | "CASCADE" | "RESTRICT") {
                    break;
                }
                out.emptied.insert(tb.clone());
                out.data.insert(tb);
                if matches!(t.get(next), Some(Tok::Other)) {
                    i = skip(&t, next + 1, &["ONLY"]);
                } else {
                    break;
                }
            }
        }
        "INSERT" | "UPDATE" | "DELETE" | "WITH" | "MERGE" | "COPY" => {
            // Every DML target in the statement (CTEs included).
            for (k, x) in t.iter().enumerate() {
                let target = match x {
                    Tok::Word { upper, .. } if upper == "INSERT" || upper == "MERGE" => {
                        is_kw(t.get(k + 1), "INTO").then(|| k + 2)
                    }
                    Tok::Word { upper, .. } if upper == "DELETE" => {
                        is_kw(t.get(k + 1), "FROM").then(|| k + 2)
                    }
                    Tok::Word { upper, .. } if upper == "UPDATE" => {
                        // not `ON CONFLICT … DO UPDATE`
                        (!is_kw(t.get(k.wrapping_sub(1)), "DO")).then_some(k + 1)
                    }
                    Tok::Word { upper, .. } if upper == "COPY" && k == 0 => Some(k + 1),
                    _ => None,
                };
                if let Some(j) = target {
                    let j = skip(&t, j, &["ONLY"]);
                    if let Some((tb, _)) = name_at(&t, j) {
                        out.data.insert(tb);
                    }
                }
            }
            if out.data.is_empty() {
                out.opaque = true;
            }
        }
        "SET" | "RESET" | "SHOW" | "ANALYZE" | "VACUUM" | "" => {}
        _ => out.opaque = true,
    }
    out
}

/// The schema of `CREATE|ALTER|DROP <kind…> [IF [NOT] EXISTS] [schema.]name`: the first
/// qualified name after the object kind, else [`UNQUALIFIED`].
fn schema_of_object(t: &[Tok], from: usize) -> String {
    for i in from..t.len().min(from + 8) {
        if matches!(t.get(i + 1), Some(Tok::Dot)) {
            if let Some((tb, _)) = name_at(t, i) {
                return tb.schema;
            }
        }
    }
    UNQUALIFIED.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_is_unwrapped_and_inner_control_names_the_line() {
        let f = Path::new("1_x.up.sql");
        let sql = "-- a comment\nBEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\n";
        let out = unwrap_transaction(f, sql, 1).unwrap();
        assert!(!out.to_uppercase().contains("BEGIN"), "{out}");
        assert!(out.contains("CREATE TABLE a"));
        let bad = "CREATE TABLE a (id int);\n\nCOMMIT;\nCREATE TABLE b (id int);\n";
        match unwrap_transaction(f, bad, 1) {
            Err(MigrationError::TransactionControl { line, file, .. }) => {
                assert_eq!(line, 3);
                assert_eq!(file, f);
            }
            other => panic!("{other:?}"),
        }
        // The line counts from where the section starts in the file.
        match unwrap_transaction(f, "SAVEPOINT a;", 10) {
            Err(MigrationError::TransactionControl { line, .. }) => assert_eq!(line, 10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn touched_tables() {
        let t = touch("UPDATE \"Users\" SET a = 1 WHERE id IN (SELECT id FROM other)");
        assert_eq!(
            t.data.iter().collect::<Vec<_>>(),
            vec![&Table::new(UNQUALIFIED, "Users")]
        );
        let t = touch("CREATE TABLE IF NOT EXISTS app.orders (id int)");
        assert!(t.created.contains(&Table::new("app", "orders")));
        let t = touch("DROP TABLE IF EXISTS a, app.b CASCADE");
        assert_eq!(t.emptied.len(), 2);
        let t = touch("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON ONLY app.x (a)");
        assert!(t.structure.contains("app"));
        let t = touch("INSERT INTO users (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2");
        assert_eq!(t.data.len(), 1);
        assert!(touch("DO $$ BEGIN PERFORM 1; END $$").opaque);
        let t = touch("TRUNCATE TABLE ONLY a, b RESTART IDENTITY");
        assert_eq!(t.emptied.len(), 2);
    }
}
