//! Statements enter the audit trail normalized: every literal becomes a
//! numbered placeholder and comments are dropped, so a password in an
//! `ALTER ROLE ... PASSWORD '...'` or a token in a `WHERE` clause never lands
//! in the trail in clear. Uses sqlparser's PostgreSQL tokenizer, not regexes.

use sqlparser::{
    dialect::PostgreSqlDialect,
    tokenizer::{Token, Tokenizer},
};

use super::hostkey::HostKey;
use crate::config::StatementMode;

/// The statement as the audit trail records it under `audit.statements`.
pub fn statement_for_audit(sql: &str, mode: StatementMode, key: &HostKey) -> String {
    match mode {
        StatementMode::Raw => sql.to_string(),
        StatementMode::Normalized => normalize_sql(sql).unwrap_or_else(|| {
            // Not even tokenizable (an unterminated quote, say): nothing of it
            // is safe to keep, but its hash still lets an investigator match it.
            format!(
                "<untokenizable statement, {} bytes, {}>",
                sql.len(),
                key.hash(sql.as_bytes())
            )
        }),
    }
}

/// Literals -> `$n`, comments dropped, whitespace runs collapsed. `None`
/// when the text does not tokenize.
pub fn normalize_sql(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    Some(normalize_tokens(tokens.iter(), sql.len()))
}

/// [`normalize_sql`] over tokens already cut (the SQL analyzer shares its
/// tokens, so a statement is tokenized once). Writes straight into the
/// output: no allocation per token.
pub fn normalize_tokens<'a>(tokens: impl Iterator<Item = &'a Token>, capacity: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(capacity);
    let mut n = 0usize;
    let mut pending_space = false;
    for token in tokens {
        if matches!(token, Token::Whitespace(_) | Token::EOF) {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        // Writing into a String cannot fail.
        if is_literal(token) {
            n += 1;
            let _ = write!(out, "${n}");
        } else {
            let _ = write!(out, "{token}");
        }
    }
    out
}

fn is_literal(t: &Token) -> bool {
    // DoubleQuotedString is a quoted identifier in PostgreSQL: kept.
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(sql: &str) -> String {
        normalize_sql(sql).expect("tokenizes")
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            n("SELECT * FROM users WHERE api_key = 'sk-live-123' AND id = 42"),
            "SELECT * FROM users WHERE api_key = $1 AND id = $2"
        );
        assert_eq!(
            n("ALTER ROLE app PASSWORD 'hunter2'"),
            "ALTER ROLE app PASSWORD $1"
        );
        assert_eq!(
            n("select $tag$s3cret$tag$, E'x\\'y', X'DEAD', 1.5e3"),
            "select $1, $2, $3, $4"
        );
        assert_eq!(
            n("SELECT \"Password\" FROM t"),
            "SELECT \"Password\" FROM t"
        );
        assert_eq!(
            n("SELECT a FROM t WHERE b = $1"),
            "SELECT a FROM t WHERE b = $1"
        );
    }

    #[test]
    fn comments_and_whitespace_are_dropped() {
        assert_eq!(
            n("SELECT 1 -- token=abc\n  FROM t /* pw: xyz */"),
            "SELECT $1 FROM t"
        );
    }

    #[test]
    fn untokenizable_statements_keep_nothing_in_clear() {
        let key = HostKey::load_or_create(tempfile::tempdir().expect("dir").path()).expect("key");
        let s = statement_for_audit(
            "SELECT 'unterminated secret",
            StatementMode::Normalized,
            &key,
        );
        assert!(!s.contains("secret"), "{s}");
        assert!(s.contains("hmac:"));
        assert_eq!(
            statement_for_audit("SELECT 'x'", StatementMode::Raw, &key),
            "SELECT 'x'"
        );
    }
}
