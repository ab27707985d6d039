//! Identifier validation and quoting, string literals, and the checks on the
//! operator-supplied extra filter.
//!
//! Names never reach SQL text unless they were first found in
//! `system.columns` (looked up with bound parameters), and even then they are
//! quoted: defence in depth against a hostile or merely odd name.

use crate::ClickHouseError;

/// ClickHouse's own limit is far higher, but no sane name is longer and a
/// bound keeps error messages and queries small.
const MAX_IDENTIFIER_BYTES: usize = 255;

/// Refuses names that no ClickHouse object can have or that only an attack
/// would use: empty, longer than 255 bytes, or containing control
/// characters (NUL, newlines, ...). Everything else is legal in a quoted
/// identifier and is handled by [`quote_identifier`].
pub(crate) fn validate_identifier(what: &'static str, name: &str) -> Result<(), ClickHouseError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        "must be at most 255 bytes"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(ClickHouseError::InvalidIdentifier {
        what,
        name: name.chars().take(64).collect(),
        reason: reason.into(),
    })
}

/// Quotes an identifier with backticks, escaping backslashes and backticks,
/// so that any validated name reads back as exactly itself.
pub fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// A single-quoted string literal with `\` and `'` escaped (control
/// characters too, so the literal stays on one line).
pub(crate) fn quote_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A table reference from `TableConfig::source_table`: `table`, `db.table`,
/// or either part backtick-quoted (`` `my.db`.`odd``name` ``) when it
/// contains a dot or a backtick.
///
/// ```
/// use offload_source_clickhouse::ident::TableRef;
/// let t = TableRef::parse("market.`odd``name`").unwrap();
/// assert_eq!(t.quoted(None), "`market`.`odd\\`name`");
/// assert!(TableRef::parse("a.b.c").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// `None`: the client's configured database, else `currentDatabase()`.
    pub database: Option<String>,
    /// The table's name, unquoted.
    pub table: String,
}

impl TableRef {
    /// Parses `table`, `db.table` or their backtick-quoted forms; names are validated.
    pub fn parse(text: &str) -> Result<TableRef, ClickHouseError> {
        let bad = |reason: &str| ClickHouseError::InvalidIdentifier {
            what: "table",
            name: text.chars().take(64).collect(),
            reason: reason.into(),
        };
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'`') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(bad("unterminated backtick quote")),
                        Some('\\') => match chars.next() {
                            Some(c) => part.push(c),
                            None => return Err(bad("dangling backslash")),
                        },
                        Some('`') if chars.peek() == Some(&'`') => {
                            chars.next();
                            part.push('`');
                        }
                        Some('`') => break,
                        Some(c) => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '`' {
                        return Err(bad("backtick inside an unquoted name (quote the whole part)"));
                    }
                    part.push(c);
                    chars.next();
                }
            }
            validate_identifier("table", &part)?;
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(bad("expected `.` or the end after a quoted name")),
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([database, table]) => Ok(TableRef {
                database: Some(database),
                table,
            }),
            Err(parts) if parts.len() == 1 => Ok(TableRef {
                database: None,
                table: parts.into_iter().next().expect("one part"),
            }),
            Err(_) => Err(bad("expected `table` or `database.table`")),
        }
    }

    /// `` `db`.`table` `` (or `` `table` ``) with `database` filling in a missing part.
    pub fn quoted(&self, default_database: Option<&str>) -> String {
        match self.database.as_deref().or(default_database) {
            Some(db) => format!("{}.{}", quote_identifier(db), quote_identifier(&self.table)),
            None => quote_identifier(&self.table),
        }
    }
}

/// Lexical checks on the operator's extra filter, which is spliced into the
/// `WHERE` clause as `AND (<filter>)`. It is trusted configuration, not user
/// input, but a typo must not be able to widen a window: a `)` that closes our
/// parenthesis, a comment that hides the rest of the query, or a `;` starting
/// another statement would. So: quotes must be closed, parentheses balanced
/// and never below zero, and no comments or semicolons outside literals.
pub(crate) fn validate_filter(filter: &str) -> Result<(), ClickHouseError> {
    let bad = |reason: &str| ClickHouseError::InvalidConfig {
        field: "filter",
        reason: format!("{reason} in {:?}", filter.chars().take(80).collect::<String>()),
    };
    if filter.trim().is_empty() {
        return Err(bad("empty filter"));
    }
    if filter.contains('\0') {
        return Err(bad("NUL byte"));
    }
    let bytes = filter.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(bad("unterminated quote")),
                        Some(b'\\') => i += 2,
                        Some(&b) if b == quote => {
                            // A doubled quote is an escaped quote.
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                            } else {
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced `)`"))?;
            }
            b';' => return Err(bad("`;`")),
            b'#' => return Err(bad("comment (`#`)")),
            b'-' if bytes.get(i + 1) == Some(&b'-') => return Err(bad("comment (`--`)")),
            b'/' if bytes.get(i + 1) == Some(&b'*') => return Err(bad("comment (`/*`)")),
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err(bad("unbalanced `(`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_backticks_and_backslashes() {
        assert_eq!(quote_identifier("a"), "`a`");
        assert_eq!(quote_identifier("a`b"), "`a\\`b`");
        assert_eq!(quote_identifier("a\\`; DROP"), "`a\\\\\\`; DROP`");
        assert_eq!(quote_identifier("nst.x"), "`nst.x`");
        assert_eq!(quote_string("it's \\ ok\n"), "'it\\'s \\\\ ok\\n'");
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(validate_identifier("column", "ok name with spaces `and` ticks").is_ok());
        for bad in ["", "a\0b", "a\nb", &"x".repeat(256)] {
            assert!(
                matches!(
                    validate_identifier("column", bad),
                    Err(ClickHouseError::InvalidIdentifier { what: "column", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn table_refs() {
        let t = TableRef::parse("trades").unwrap();
        assert_eq!(t.database, None);
        assert_eq!(t.quoted(None), "`trades`");
        assert_eq!(t.quoted(Some("db")), "`db`.`trades`");
        let t = TableRef::parse("db.trades").unwrap();
        assert_eq!(t.database.as_deref(), Some("db"));
        assert_eq!(t.quoted(Some("other")), "`db`.`trades`");
        let t = TableRef::parse("`my.db`.`odd``name`").unwrap();
        assert_eq!(t.database.as_deref(), Some("my.db"));
        assert_eq!(t.table, "odd`name");
        assert_eq!(t.quoted(None), "`my.db`.`odd\\`name`");
        let t = TableRef::parse("`a\\`b`").unwrap();
        assert_eq!(t.table, "a`b");
        for bad in ["a.b.c", "", ".t", "db.", "`open", "a`b", "`x`y", "t\0"] {
            assert!(TableRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters() {
        for ok in [
            "symbol = 'BTC-USD'",
            "price > 0 AND (side = 'buy' OR side = 'sell')",
            "s = 'it''s (not) a -- comment; really'",
            "s = 'a\\'b)'",
            "`odd``col` != \"x\"",
            "a - -1 > 0",
        ] {
            validate_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "   ",
            "1) OR (1",
            "1 OR 1)",
            "(1",
            "1; DROP TABLE t",
            "1 -- hide the rest",
            "1 /* x */",
            "1 # x",
            "s = 'open",
            "a\0",
        ] {
            assert!(
                matches!(
                    validate_filter(bad),
                    Err(ClickHouseError::InvalidConfig { field: "filter", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
