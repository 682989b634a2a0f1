//! SQL identifiers and literals, quoted properly, and table names.

use rollback_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Quote an identifier for SQL: always double-quoted, inner quotes doubled, so that mixed
/// case, spaces, quotes and unicode survive.
///
/// ```
/// use rollback_postgres::quote_ident;
/// assert_eq!(quote_ident("Order \"Items\""), "\"Order \"\"Items\"\"\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Quote a string literal for SQL so that it means the same whatever
/// `standard_conforming_strings` is: quotes doubled, and a value holding a backslash
/// written as an escape string (`E'…'`) with its backslashes doubled (a plain `'…'` would
/// read `\'` as an escaped quote where `standard_conforming_strings` is off).
///
/// ```
/// use rollback_postgres::quote_literal;
/// assert_eq!(quote_literal("it's"), "'it''s'");
/// assert_eq!(quote_literal(r"x\'; DROP TABLE t; --"), r"E'x\\''; DROP TABLE t; --'");
/// ```
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// Dollar-quote `body` with a random tag that does not occur in it, so that nothing in the
/// body (a name, a comment read from the catalog) can end the quote.
pub(crate) fn dollar_quote(body: &str) -> String {
    loop {
        let tag = format!("$rb_{}$", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        if !body.contains(&tag) {
            return format!("{tag}{body}{tag}");
        }
    }
}

/// Check a name can be used as an identifier (non-empty, no NUL, at most 63 bytes).
pub(crate) fn check_ident(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} name {name:?} is empty or contains NUL"
        )));
    }
    if name.len() > 63 {
        return Err(Error::invalid(format!(
            "{what} name {name:?} is longer than PostgreSQL's 63-byte identifier limit"
        )));
    }
    Ok(())
}

/// A table: schema and name, both taken verbatim (no case folding, no parsing).
///
/// ```
/// use rollback_postgres::Table;
/// let t = Table::new("Sales Data", "Öffnungszeiten");
/// assert_eq!(t.quoted(), "\"Sales Data\".\"Öffnungszeiten\"");
/// assert_eq!(Table::public("accounts").to_string(), "public.accounts");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Table {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl Table {
    /// A table in `schema`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Table {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// A table in the `public` schema.
    pub fn public(name: impl Into<String>) -> Self {
        Self::new("public", name)
    }

    /// `"schema"."name"`, for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.name` as a literal suitable for `::regclass`.
    pub(crate) fn regclass_literal(&self) -> String {
        quote_literal(&self.quoted())
    }

    /// The resource id part: `schema.table`, each part double-quoted only when it
    /// contains one of `." /:` (so that ids stay readable and never collide).
    pub fn resource_part(&self) -> String {
        format!("{}.{}", id_part(&self.schema), id_part(&self.name))
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_ident("schema", &self.schema)?;
        check_ident("table", &self.name)
    }
}

/// A resource-id component: verbatim unless it holds a separator, then quoted.
pub(crate) fn id_part(s: &str) -> String {
    if s.is_empty() || s.contains(['.', '"', '/', ':', ' ', '+', ',']) {
        quote_ident(s)
    } else {
        s.to_string()
    }
}

impl fmt::Display for Table {
    /// Human form, `schema.name` (not quoted; use [`Table::quoted`] for SQL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A comma-separated list of quoted column names.
pub(crate) fn column_list<S: AsRef<str>>(cols: &[S]) -> String {
    cols.iter()
        .map(|c| quote_ident(c.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same, each prefixed with `alias.`.
pub(crate) fn column_list_with<S: AsRef<str>>(alias: &str, cols: &[S]) -> String {
    cols.iter()
        .map(|c| format!("{alias}.{}", quote_ident(c.as_ref())))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_with_quotes_spaces_and_unicode_are_quoted() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("We\"ird"), "\"We\"\"ird\"");
        assert_eq!(quote_ident("ünï cödé"), "\"ünï cödé\"");
        assert_eq!(
            Table::new("My Schema", "t.1").resource_part(),
            "\"My Schema\".\"t.1\""
        );
        assert_eq!(Table::new("a", "b.c").resource_part(), "a.\"b.c\"");
        assert_ne!(
            Table::new("a.b", "c").resource_part(),
            Table::new("a", "b.c").resource_part()
        );
    }

    #[test]
    fn literals_double_their_quotes_and_escape_backslashes_whatever_the_setting() {
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
        assert_eq!(quote_literal("back\\slash"), "E'back\\\\slash'");
        assert_eq!(quote_literal("x\\'; --"), "E'x\\\\''; --'");
    }

    #[test]
    fn dollar_quotes_never_end_inside_their_body() {
        let body = "a $rb_0$ b $$ c";
        let q = dollar_quote(body);
        let tag = &q[..q[1..].find('$').unwrap() + 2];
        assert!(q.ends_with(tag) && q[tag.len()..q.len() - tag.len()] == *body);
        assert!(!body.contains(tag));
    }
}
