//! A small SQL scanner: splits a script into statements and reads the words of each, with
//! string literals, quoted identifiers, dollar quotes and comments taken out, to detect
//! destructive statements and statements that cannot run inside a transaction.
//!
//! It is a scanner, not a parser: it recognizes the statement shapes listed on
//! [`crate::SqlStep`] and errs on the side of calling a statement destructive.
//!
//! It reads literals as the server does with `standard_conforming_strings = on` — a
//! backslash escapes only in `E'…'` strings — which every session of this crate pins (see
//! [`crate::Database`]); a script that changes that setting is refused
//! ([`session_state`]), so scanner and server never disagree on where a literal ends.

/// One statement of a script: its text and its words (upper-cased, literals removed,
/// quoted identifiers as `"…"` tokens, punctuation `(` `)` `,` kept as tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub text: String,
    pub words: Vec<String>,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The statements.
    pub statements: Vec<Statement>,
    /// Semicolons outside literals, comments and `BEGIN ATOMIC` bodies.
    pub semicolons: usize,
    /// A literal, quoted identifier, dollar quote or block comment left open at the end.
    pub unterminated: Option<&'static str>,
}

/// Split `sql` into statements at top-level semicolons.
pub(crate) fn split(sql: &str) -> Vec<Statement> {
    scan(sql).statements
}

/// Split `sql` into statements, counting top-level semicolons and noticing what is left
/// open at the end.
pub(crate) fn scan(sql: &str) -> Scan {
    let mut semicolons = 0usize;
    let mut unterminated = None;
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut atomic_depth = 0usize;
    let mut i = 0;
    let flush_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(word.to_uppercase());
            word.clear();
        }
    };
    while i < b.len() {
        let c = b[i];
        // Line comment.
        if c == '-' && b.get(i + 1) == Some(&'-') {
            flush_word(&mut word, &mut words);
            while i < b.len() && b[i] != '\n' {
                text.push(b[i]);
                i += 1;
            }
            continue;
        }
        // Block comment (nested).
        if c == '/' && b.get(i + 1) == Some(&'*') {
            flush_word(&mut word, &mut words);
            let mut depth = 0;
            unterminated = Some("block comment");
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    text.push_str("/*");
                    i += 2;
                    continue;
                }
                if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    text.push_str("*/");
                    i += 2;
                    if depth == 0 {
                        unterminated = None;
                        break;
                    }
                    continue;
                }
                text.push(b[i]);
                i += 1;
            }
            continue;
        }
        // String literal (E'' strings honour backslash escapes).
        if c == '\'' {
            let escapes = word.eq_ignore_ascii_case("e");
            if escapes {
                word.clear();
            }
            flush_word(&mut word, &mut words);
            text.push(c);
            i += 1;
            unterminated = Some("string literal");
            while i < b.len() {
                if escapes && b[i] == '\\' && i + 1 < b.len() {
                    text.push(b[i]);
                    text.push(b[i + 1]);
                    i += 2;
                    continue;
                }
                if b[i] == '\'' {
                    if b.get(i + 1) == Some(&'\'') {
                        text.push_str("''");
                        i += 2;
                        continue;
                    }
                    text.push('\'');
                    i += 1;
                    unterminated = None;
                    break;
                }
                text.push(b[i]);
                i += 1;
            }
            words.push("'…'".into());
            continue;
        }
        // Quoted identifier.
        if c == '"' {
            flush_word(&mut word, &mut words);
            text.push(c);
            i += 1;
            unterminated = Some("quoted identifier");
            while i < b.len() {
                if b[i] == '"' {
                    if b.get(i + 1) == Some(&'"') {
                        text.push_str("\"\"");
                        i += 2;
                        continue;
                    }
                    text.push('"');
                    i += 1;
                    unterminated = None;
                    break;
                }
                text.push(b[i]);
                i += 1;
            }
            words.push("\"…\"".into());
            continue;
        }
        // Dollar quote: $tag$ … $tag$ (not a $1 parameter).
        if c == '$' && word.is_empty() {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            let tag_ok =
                j < b.len() && b[j] == '$' && !b.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if tag_ok {
                let tag: String = b[i..=j].iter().collect();
                let tag_chars: Vec<char> = tag.chars().collect();
                text.push_str(&tag);
                i = j + 1;
                unterminated = Some("dollar-quoted string");
                loop {
                    if i >= b.len() {
                        break;
                    }
                    if b[i] == '$' && b[i..].starts_with(&tag_chars) {
                        text.push_str(&tag);
                        i += tag_chars.len();
                        unterminated = None;
                        break;
                    }
                    text.push(b[i]);
                    i += 1;
                }
                words.push("$…$".into());
                continue;
            }
        }
        if c == ';' && atomic_depth == 0 {
            semicolons += 1;
            flush_word(&mut word, &mut words);
            push_statement(&mut out, &mut text, &mut words);
            i += 1;
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' || c == '.' {
            word.push(c);
        } else {
            flush_word(&mut word, &mut words);
            if matches!(c, '(' | ')' | ',') {
                words.push(c.to_string());
            }
        }
        // SQL-standard function bodies: BEGIN ATOMIC … END hold semicolons.
        if !(c.is_alphanumeric() || c == '_') {
            if let Some(last) = words.last() {
                if last == "ATOMIC" && words.len() >= 2 && words[words.len() - 2] == "BEGIN" {
                    atomic_depth += 1;
                    words.push("·".into());
                } else if last == "END" && atomic_depth > 0 {
                    let case_open = words.iter().filter(|w| *w == "CASE").count();
                    let ends = words.iter().filter(|w| *w == "END").count();
                    if ends > case_open {
                        atomic_depth -= 1;
                    }
                    words.push("·".into());
                }
            }
        }
        text.push(c);
        i += 1;
    }
    flush_word(&mut word, &mut words);
    push_statement(&mut out, &mut text, &mut words);
    Scan {
        statements: out,
        semicolons,
        unterminated,
    }
}

fn push_statement(out: &mut Vec<Statement>, text: &mut String, words: &mut Vec<String>) {
    words.retain(|w| w != "·");
    if !words.is_empty() {
        out.push(Statement {
            text: text.trim().to_string(),
            words: std::mem::take(words),
        });
    }
    text.clear();
    words.clear();
}

/// Why a statement destroys data (None: it does not, as far as the scanner can tell).
pub(crate) fn destructive(s: &Statement) -> Option<String> {
    let w = &s.words;
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    match at(0) {
        "TRUNCATE" => return Some("TRUNCATE".into()),
        "DELETE" => return Some("DELETE".into()),
        "DROP" => {
            let what = match at(1) {
                "TABLE" => Some("DROP TABLE"),
                "SCHEMA" => Some("DROP SCHEMA"),
                "DATABASE" => Some("DROP DATABASE"),
                "SEQUENCE" => Some("DROP SEQUENCE"),
                "OWNED" => Some("DROP OWNED"),
                "MATERIALIZED" => Some("DROP MATERIALIZED VIEW"),
                _ => None,
            };
            return what.map(String::from);
        }
        "ALTER" if at(1) == "TABLE" => {}
        _ => return None,
    }
    // ALTER TABLE …: look at each DROP and TYPE.
    for i in 2..w.len() {
        match at(i) {
            "DROP" => {
                let next = at(i + 1);
                let safe = matches!(
                    next,
                    "CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION"
                );
                let prev = at(i - 1);
                // `ALTER COLUMN c DROP DEFAULT` etc. are handled above; `SET WITHOUT` not.
                if !safe && prev != "CASCADE" {
                    return Some("ALTER TABLE … DROP COLUMN".into());
                }
            }
            "TYPE" => {
                // `ALTER [COLUMN] c [SET DATA] TYPE t`; text and unbounded varchar widen.
                let t = at(i + 1);
                let widening = t == "TEXT"
                    || ((t == "VARCHAR" || (t == "CHARACTER" && at(i + 2) == "VARYING"))
                        && at(i + if t == "VARCHAR" { 2 } else { 3 }) != "(");
                if !widening {
                    return Some(format!("ALTER COLUMN … TYPE {t} (may narrow)"));
                }
            }
            _ => {}
        }
    }
    None
}

/// Why a statement cannot run inside a transaction block (None: it can).
pub(crate) fn non_transactional(s: &Statement) -> Option<String> {
    let w = &s.words;
    let has = |x: &str| w.iter().any(|y| y == x);
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    if has("CONCURRENTLY")
        && matches!(at(0), "CREATE" | "DROP" | "REINDEX")
        && (has("INDEX") || at(0) == "REINDEX")
    {
        return Some(format!("{} … CONCURRENTLY", at(0)));
    }
    if at(0) == "ALTER" && at(1) == "TABLE" && has("DETACH") && has("CONCURRENTLY") {
        return Some("DETACH PARTITION … CONCURRENTLY".into());
    }
    match (at(0), at(1)) {
        ("VACUUM", _) => Some("VACUUM".into()),
        ("CREATE", "DATABASE") | ("DROP", "DATABASE") => Some(format!("{} DATABASE", at(0))),
        ("CREATE", "TABLESPACE") | ("DROP", "TABLESPACE") => Some(format!("{} TABLESPACE", at(0))),
        ("ALTER", "SYSTEM") => Some("ALTER SYSTEM".into()),
        ("REINDEX", "SYSTEM") | ("REINDEX", "DATABASE") => Some("REINDEX DATABASE".into()),
        _ => None,
    }
}

/// Whether a statement controls the transaction (`BEGIN`, `COMMIT`…), which would break
/// a step's atomicity.
pub(crate) fn transaction_control(s: &Statement) -> bool {
    let first = s.words.first().map(String::as_str).unwrap_or("");
    let second = s.words.get(1).map(String::as_str).unwrap_or("");
    matches!(
        first,
        "BEGIN" | "COMMIT" | "ROLLBACK" | "END" | "ABORT" | "SAVEPOINT" | "RELEASE"
    ) || (first == "START" && second == "TRANSACTION")
        || (first == "PREPARE" && second == "TRANSACTION")
}

/// Settings a script may not change even for its own transaction: the scanner reads the
/// script as the server does only with `standard_conforming_strings` on, and
/// `session_replication_role` other than `origin` silences triggers (an undo log's) and
/// foreign keys.
const PINNED: [&str; 2] = ["STANDARD_CONFORMING_STRINGS", "SESSION_REPLICATION_ROLE"];

/// Why a statement changes the state of the session beyond its own transaction, or a
/// setting this crate pins (None: it does not). Session-level `SET`, `RESET`, `SET ROLE`,
/// `SET SESSION AUTHORIZATION`, `SET SESSION CHARACTERISTICS` and `DISCARD ALL` would
/// outlive the step on a pooled connection; `SET LOCAL`, `SET TRANSACTION` and
/// `SET CONSTRAINTS` end with the step's transaction and are allowed, except for the
/// pinned settings.
pub(crate) fn session_state(s: &Statement) -> Option<String> {
    let w = &s.words;
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let pinned = |name: &str| {
        if name == "\"…\"" {
            Some(
                "a setting named by a quoted identifier (pinned settings cannot be told apart)"
                    .to_string(),
            )
        } else if PINNED.contains(&name) {
            Some(format!(
                "{} (a setting this crate pins: see Database)",
                name.to_lowercase()
            ))
        } else {
            None
        }
    };
    match at(0) {
        "SET" => match at(1) {
            "LOCAL" => match at(2) {
                "ROLE" | "SESSION" | "TIME" => None,
                name => pinned(name).map(|p| format!("SET LOCAL {p}")),
            },
            "TRANSACTION" | "CONSTRAINTS" => None,
            "SESSION" => match at(2) {
                "AUTHORIZATION" => Some("SET SESSION AUTHORIZATION (session-level)".into()),
                "CHARACTERISTICS" => Some("SET SESSION CHARACTERISTICS (session-level)".into()),
                name => Some(format!(
                    "SET SESSION {} (session-level; use SET LOCAL)",
                    pinned(name).unwrap_or_else(|| name.to_lowercase())
                )),
            },
            "ROLE" => Some("SET ROLE (session-level; use SET LOCAL ROLE)".into()),
            name => Some(format!(
                "SET {} (session-level; use SET LOCAL)",
                pinned(name).unwrap_or_else(|| name.to_lowercase())
            )),
        },
        "RESET" => Some(format!("RESET {} (session-level)", at(1).to_lowercase())),
        "DISCARD" if at(1) == "ALL" => Some("DISCARD ALL (resets the session)".into()),
        _ => None,
    }
}

/// Where a user fragment goes in the SQL this crate writes around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A condition, put in parentheses (`WHERE … AND (<fragment>)`).
    Condition,
    /// The assignments of an `UPDATE … SET <fragment> WHERE …`.
    Assignments,
}

/// Why `sql` cannot be used as one fragment of the given kind (None: it can): it must be
/// one expression (or assignment list) — no statement break, every parenthesis closed
/// inside it and none closing one of the surrounding SQL, nothing left open (a literal, a
/// quoted identifier, a comment), and for assignments no top-level `WHERE`, `FROM` or
/// `RETURNING` that would take over the statement.
pub(crate) fn fragment_problem(sql: &str, kind: Fragment) -> Option<String> {
    let sc = scan(sql);
    if let Some(what) = sc.unterminated {
        return Some(format!("a {what} is left open"));
    }
    if sc.semicolons > 0 || sc.statements.len() > 1 {
        return Some("it holds a `;` (one expression only)".into());
    }
    let Some(st) = sc.statements.first() else {
        return Some("it is empty".into());
    };
    let mut depth = 0i64;
    for w in &st.words {
        match w.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth < 0 {
                    return Some(
                        "a `)` closes a parenthesis it did not open (it would escape its place in the statement)"
                            .into(),
                    );
                }
            }
            "WHERE" | "FROM" | "RETURNING" if depth == 0 && kind == Fragment::Assignments => {
                return Some(format!("a top-level {w} would change the statement"));
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Some("a `(` is not closed".into());
    }
    None
}

/// The columns an assignment list (`a = 1, b = f(x, y), (c, d) = (…)`) sets, folded as
/// the server folds unquoted names; `None` when the scanner cannot name them all exactly
/// (a quoted identifier among the targets, a shape it does not know).
pub(crate) fn assignment_targets(sql: &str) -> Option<Vec<String>> {
    if fragment_problem(sql, Fragment::Assignments).is_some() {
        return None;
    }
    let st = split(sql).into_iter().next()?;
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut at_start = true;
    let mut w = st.words.iter().peekable();
    while let Some(word) = w.next() {
        if at_start {
            at_start = false;
            if word == "(" {
                // (a, b) = (…): names up to the closing parenthesis.
                depth += 1;
                for t in w.by_ref() {
                    match t.as_str() {
                        ")" => break,
                        "," => {}
                        t => out.push(column_name(t)?),
                    }
                }
                depth -= 1;
            } else {
                out.push(column_name(word)?);
            }
            continue;
        }
        match word.as_str() {
            "(" => depth += 1,
            ")" => depth = depth.saturating_sub(1),
            "," if depth == 0 => at_start = true,
            _ => {}
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// An unquoted target word as the server names the column (`tier`, `tier.field` → `tier`).
fn column_name(word: &str) -> Option<String> {
    let name = word.split('.').next()?;
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    ok.then(|| name.to_lowercase())
}

/// `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name` → the index name as written
/// (unquoted identifiers folded to lower case), to clean up an invalid leftover.
pub(crate) fn concurrent_index_name(s: &Statement) -> Option<String> {
    let w = &s.words;
    if w.first().map(String::as_str) != Some("CREATE") {
        return None;
    }
    let pos = w.iter().position(|x| x == "CONCURRENTLY")?;
    if !w[..pos].iter().any(|x| x == "INDEX") {
        return None;
    }
    let mut i = pos + 1;
    if w.get(i).map(String::as_str) == Some("IF") {
        i += 3;
    }
    let name = w.get(i)?;
    if name == "ON" || name == "\"…\"" {
        return None; // unnamed, or quoted (left alone)
    }
    Some(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destr(sql: &str) -> Vec<Option<String>> {
        split(sql).iter().map(destructive).collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let s = split(
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; \
             INSERT INTO t VALUES ('a;b', E'c\\';d'); -- x; y\n \
             /* a; /* nested; */ b; */ SELECT \"we;ird\";",
        );
        assert_eq!(s.len(), 3, "{s:#?}");
        assert!(s[0].text.contains("SELECT 1;"));
        assert!(s[1].text.starts_with("INSERT"));
        assert_eq!(s[2].words, vec!["SELECT", "\"…\""]);
    }

    #[test]
    fn names_the_columns_an_assignment_list_sets() {
        let t = |s: &str| assignment_targets(s);
        assert_eq!(t("tier = 'basic'"), Some(vec!["tier".into()]));
        assert_eq!(
            t("Tier = lower(name), score = coalesce(a, b, 0)"),
            Some(vec!["tier".into(), "score".into()])
        );
        assert_eq!(
            t("(a, b) = (1, 2), c = (SELECT x FROM y WHERE z = 1)"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(t("addr.city = 'x'"), Some(vec!["addr".into()]));
        assert_eq!(t("note = 'a, b = c'"), Some(vec!["note".into()]));
        // Quoted targets, odd shapes and bad fragments are not guessed.
        assert_eq!(t("\"Tier\" = 1"), None);
        assert_eq!(t("a = 1, \"b\" = 2"), None);
        assert_eq!(t("a = 1 WHERE true"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn detects_destructive_statements() {
        assert!(destr("DROP TABLE t")[0].is_some());
        assert!(destr("truncate t")[0].is_some());
        assert!(destr("ALTER TABLE t DROP COLUMN c")[0].is_some());
        assert!(destr("ALTER TABLE t DROP c")[0].is_some());
        assert!(destr("ALTER TABLE t DROP COLUMN IF EXISTS c")[0].is_some());
        assert!(destr("ALTER TABLE t ALTER COLUMN c TYPE int")[0].is_some());
        assert!(destr("ALTER TABLE t ALTER c SET DATA TYPE varchar(10)")[0].is_some());
        assert!(destr("DELETE FROM t WHERE x")[0].is_some());
    }

    #[test]
    fn leaves_non_destructive_statements_alone() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c text",
            "ALTER TABLE t DROP CONSTRAINT k",
            "ALTER TABLE t ALTER COLUMN c DROP DEFAULT",
            "ALTER TABLE t ALTER COLUMN c DROP NOT NULL",
            "ALTER TABLE t ALTER COLUMN c TYPE text",
            "ALTER TABLE t ALTER COLUMN c TYPE varchar",
            "DROP INDEX i",
            "UPDATE t SET a = 'DROP TABLE x'",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
        ] {
            assert_eq!(destr(sql), vec![None], "{sql}");
        }
    }

    #[test]
    fn finds_transaction_control_but_not_function_bodies() {
        let s = split("BEGIN; UPDATE t SET a = 1; COMMIT; CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN NULL; END $$");
        let tc: Vec<bool> = s.iter().map(transaction_control).collect();
        assert_eq!(tc, vec![true, false, true, false]);
    }

    #[test]
    fn refuses_session_level_settings_and_pinned_ones_even_locally() {
        let why = |sql: &str| split(sql).iter().map(session_state).collect::<Vec<_>>();
        for sql in [
            "SET session_replication_role = replica",
            "set search_path to evil",
            "SET SESSION work_mem = '1GB'",
            "SET ROLE other",
            "SET SESSION AUTHORIZATION other",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "RESET ALL",
            "RESET search_path",
            "DISCARD ALL",
            "SET LOCAL standard_conforming_strings = off",
            "SET LOCAL session_replication_role = replica",
            "SET LOCAL \"standard_conforming_strings\" = off",
        ] {
            assert!(why(sql)[0].is_some(), "{sql}");
        }
        for sql in [
            "SET LOCAL lock_timeout = '1s'",
            "SET LOCAL ROLE other",
            "SET LOCAL search_path = app, public",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "UPDATE t SET a = 1",
            "DISCARD TEMP",
        ] {
            assert_eq!(why(sql), vec![None], "{sql}");
        }
        let r = why("SET standard_conforming_strings = off")[0]
            .clone()
            .unwrap();
        assert!(r.contains("standard_conforming_strings"), "{r}");
    }

    #[test]
    fn fragments_must_be_one_expression_that_stays_in_place() {
        use Fragment::*;
        for (sql, kind) in [
            ("id <= 0) OR (true", Condition),
            ("true; DROP TABLE t", Condition),
            ("true;", Condition),
            ("(a", Condition),
            ("a = 'open", Condition),
            ("a /* open", Condition),
            ("v = 1 WHERE true", Assignments),
            ("v = 1 FROM other", Assignments),
            ("v = 1 RETURNING *", Assignments),
            ("", Condition),
        ] {
            assert!(fragment_problem(sql, kind).is_some(), "{sql}");
        }
        for (sql, kind) in [
            ("first_name IS NULL AND name <> ')'", Condition),
            ("id IN (SELECT id FROM x WHERE y) -- why", Condition),
            (
                "a = split_part(name, ' ', 1), b = (SELECT max(v) FROM w WHERE w.id = t.id)",
                Assignments,
            ),
            ("note = E'it\\'s ;)'", Assignments),
        ] {
            assert_eq!(fragment_problem(sql, kind), None, "{sql}");
        }
    }

    #[test]
    fn detects_statements_that_cannot_run_in_a_transaction() {
        let s = split("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON t (a); VACUUM t; CREATE INDEX i ON t(a)");
        assert!(non_transactional(&s[0]).is_some());
        assert_eq!(concurrent_index_name(&s[0]).as_deref(), Some("idx_a"));
        assert!(non_transactional(&s[1]).is_some());
        assert!(non_transactional(&s[2]).is_none());
    }
}
