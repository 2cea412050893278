//! SQL analysis and the SQL part of rule matching.
//!
//! A `[[rule]]` with `sql = { statements, functions, relations, settings,
//! unparsable, without_where }` is a denylist, so the analyzer errs on the side of
//! *seeing too much*: every function call and every relation anywhere in a
//! statement (select list, WHERE, CTEs, subqueries, defaults, RETURNING,
//! table functions, CALL, the body of PREPARE and EXPLAIN) is reported, under
//! its name as written and its unqualified name, so that `pg_read_file`
//! catches `pg_catalog.pg_read_file` too.
//!
//! The text is first split into statements on top-level `;` tokens and each
//! piece is parsed on its own. That way one statement sqlparser does not
//! understand (`DO $$ ... $$`, `ALTER SYSTEM`) still gets a kind taken from its
//! leading keywords, and the statements around it are still analyzed. A piece
//! that does not parse is reported as unparsable; the policy denies those
//! unless a rule says otherwise, because we cannot know what they do.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyTarget, Expr, FromTable, Ident, ObjectName, ObjectNamePart, Query, SetExpr, Statement,
    TableFactor, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::config::SqlMatch;

mod utility;

/// What a piece of SQL does, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    /// One entry per statement, in order, parsed or not.
    pub statements: Vec<StatementInfo>,
    /// The first parser error when some of the text does not parse.
    pub unparsable: Option<String>,
}

/// One DELETE or UPDATE that has no WHERE clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfiltered {
    /// `delete` or `update`.
    pub kind: String,
    /// The target table as written (lower-cased unless quoted).
    pub relation: String,
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementInfo {
    /// Lower-case leading keyword(s), close to PostgreSQL's command tag:
    /// `select`, `delete`, `create table`, `alter system`, `create extension`,
    /// `copy program`, `set role`, `set session authorization`, `do`, ...
    /// A WITH query gets the kind of its body (`with` is not a kind; see
    /// [`StatementInfo::with_clause`]).
    pub kind: String,
    /// Every function called anywhere, as written (schema-qualified if it
    /// was) and unqualified; unquoted names lower-cased.
    pub functions: Vec<String>,
    /// Every relation read or written, and for DDL the object it creates,
    /// drops or alters; as written and unqualified, unquoted parts lower-cased.
    pub relations: Vec<String>,
    /// A DELETE or UPDATE anywhere in the statement (including data-modifying
    /// CTEs and PREPARE/EXPLAIN bodies) has no WHERE clause.
    pub without_where: bool,
    /// Which DELETE/UPDATE lacked a WHERE clause, for `without_where` rules
    /// and for the denial message.
    pub unfiltered: Vec<Unfiltered>,
    /// `WITH x AS (DELETE/UPDATE/INSERT/MERGE ...)` somewhere in the statement.
    pub data_modifying_cte: bool,
    /// The statement starts with a WITH clause (so a rule listing `with`
    /// can still match it).
    pub with_clause: bool,
    /// `COPY ... TO/FROM PROGRAM`: runs a shell command on the server.
    pub copy_program: bool,
    /// `COPY ... TO/FROM '/path'`: reads or writes a file on the server.
    pub copy_server_file: bool,
    /// `PREPARE name AS <stmt>`: the kind of `<stmt>`. Its functions,
    /// relations and missing WHEREs are merged into this statement.
    pub prepare_body_kind: Option<String>,
    /// Run-time configuration parameters the statement changes, lower-cased:
    /// `SET name ...` (`role` and `session_authorization` for SET ROLE and
    /// SET SESSION AUTHORIZATION) and every `set_config('name', ...)` call.
    /// [`UNKNOWN_SETTING`] when a `set_config` names its setting with
    /// anything but a string literal: it could be any of them.
    pub settings: Vec<String>,
    /// The parser error when this statement does not parse; then only
    /// `kind` is known.
    pub error: Option<String>,
}

/// In [`StatementInfo::settings`]: a setting whose name is computed at run
/// time. Every `settings` rule matches it (fail closed).
pub const UNKNOWN_SETTING: &str = "?";

/// Analyzes SQL text as PostgreSQL would receive it in a simple Query or a
/// Parse message. Never panics; empty text gives zero statements.
pub fn analyze(sql: &str) -> Analysis {
    analyze_parsed(sql).0
}

/// [`analyze`], and also the parsed statements for checks that need the
/// whole tree (column masking, [`super::mask_sql`]). The second vector is
/// aligned with [`Analysis::statements`]: entry `i` is the AST of statement
/// `i`, or `None` when that statement did not parse (or was too complex to
/// parse safely; its `error` says why) or is a utility statement read from
/// its tokens (VACUUM, ANALYZE, FETCH, ...: no `error`, see `utility.rs`).
pub fn analyze_parsed(sql: &str) -> (Analysis, Vec<Option<Statement>>) {
    let (analysis, asts, _) = analyze_full(sql, false);
    (analysis, asts)
}

/// [`analyze_parsed`], and with `normalize` also the text as the audit trail
/// records it ([`crate::audit::normalize::normalize_tokens`]) from the same
/// tokens. The normalized text is `None` when the SQL does not tokenize.
pub fn analyze_full(
    sql: &str,
    normalize: bool,
) -> (Analysis, Vec<Option<Statement>>, Option<String>) {
    let tokens = match tokenize_sql(sql) {
        Ok(tokens) => tokens,
        Err(error) => {
            // Unterminated quote and the like: nothing can be split reliably,
            // so the whole text is one unparsable statement.
            let statements = if sql.trim().is_empty() {
                Vec::new()
            } else {
                vec![StatementInfo {
                    kind: naive_kind(sql),
                    error: Some(error.clone()),
                    ..StatementInfo::default()
                }]
            };
            let parsed = statements.iter().map(|_| None).collect();
            return (
                Analysis {
                    statements,
                    unparsable: Some(error),
                },
                parsed,
                None,
            );
        }
    };
    let normalized = normalize.then(|| {
        crate::audit::normalize::normalize_tokens(tokens.iter().map(|t| &t.token), sql.len())
    });
    let (analysis, asts) = analyze_tokens(tokens);
    (analysis, asts, normalized)
}

/// The analysis of a statement whose bytes are not UTF-8 (a session in
/// another client_encoding), given as its text with the invalid bytes
/// replaced: one unparsable statement, since the analyzer cannot know
/// what the replaced bytes spell (a name a rule or mask lists, or, in an
/// encoding that is not ASCII-safe, a quote). Denied by default like any
/// unparsable statement; a rule may allow it.
pub fn undecodable(text: &str) -> (Analysis, Vec<Option<Statement>>) {
    let error = "the statement is not valid UTF-8 (the session's client_encoding is not UTF8); \
                 the proxy checks statements in UTF-8 only: set client_encoding to UTF8"
        .to_string();
    (
        Analysis {
            statements: vec![StatementInfo {
                kind: naive_kind(text),
                error: Some(error.clone()),
                ..StatementInfo::default()
            }],
            unparsable: Some(error),
        },
        vec![None],
    )
}

/// The PostgreSQL tokens of `sql`, or the tokenizer's error.
pub fn tokenize_sql(sql: &str) -> Result<Vec<TokenWithSpan>, String> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())
}

/// [`analyze_parsed`] over the tokens of [`tokenize_sql`].
pub fn analyze_tokens(tokens: Vec<TokenWithSpan>) -> (Analysis, Vec<Option<Statement>>) {
    let dialect = PostgreSqlDialect {};

    let mut analysis = Analysis::default();
    let mut asts = Vec::new();
    for piece in split_statements(tokens) {
        let token_kind = kind_from_tokens(&piece);
        let cursor_statement = matches!(token_kind.as_str(), "fetch" | "move");
        if !cursor_statement {
            if let Some(info) = utility::recognize(&piece) {
                analysis.statements.push(info);
                asts.push(None);
                continue;
            }
        }
        let piece = rewrite_leading_keyword(unqualify_builtin_operators(piece));
        let piece = rewrite_copy_options(drop_deferrable(piece));
        // FETCH and MOVE in the forms sqlparser's FETCH lacks: read here.
        let fallback = cursor_statement.then(|| piece.clone());
        let operators = operator_count(&piece);
        if operators > MAX_OPERATORS {
            let error = format!(
                "statement too complex to analyze safely: {operators} operators (limit {MAX_OPERATORS})"
            );
            analysis.unparsable.get_or_insert_with(|| error.clone());
            analysis.statements.push(StatementInfo {
                kind: token_kind,
                error: Some(error),
                ..StatementInfo::default()
            });
            asts.push(None);
            continue;
        }
        let parsed = Parser::new(&dialect)
            .with_tokens_with_locations(piece)
            .parse_statements();
        match parsed {
            Ok(statements) => {
                for statement in statements {
                    analysis
                        .statements
                        .push(analyze_statement(&statement, &token_kind));
                    asts.push(Some(statement));
                }
            }
            Err(e) => {
                if let Some(mut info) = fallback.as_deref().and_then(utility::recognize) {
                    info.kind = token_kind;
                    analysis.statements.push(info);
                    asts.push(None);
                    continue;
                }
                let error = e.to_string();
                analysis.unparsable.get_or_insert_with(|| error.clone());
                analysis.statements.push(StatementInfo {
                    kind: token_kind,
                    error: Some(error),
                    ..StatementInfo::default()
                });
                asts.push(None);
            }
        }
    }
    (analysis, asts)
}

/// Statements PostgreSQL has and sqlparser does not, spelled as their exact
/// equivalent so that rules and masks check them as the server runs them:
/// `TABLE t` is `SELECT * FROM t` (masks apply to it as to any SELECT), and
/// `MOVE ...` has FETCH's grammar and moves the cursor without returning
/// rows. The statement keeps its kind (`table`, `move`) from its own words.
fn rewrite_leading_keyword(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let Some(first) = tokens
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
    else {
        return tokens;
    };
    let Token::Word(w) = &tokens[first].token else {
        return tokens;
    };
    if w.quote_style.is_some() {
        return tokens;
    }
    let span = tokens[first].span;
    let at = |token: Token| TokenWithSpan { token, span };
    if w.value.eq_ignore_ascii_case("table") {
        let select = [
            at(Token::make_keyword("SELECT")),
            at(Token::Whitespace(sqlparser::tokenizer::Whitespace::Space)),
            at(Token::Mul),
            at(Token::Whitespace(sqlparser::tokenizer::Whitespace::Space)),
            at(Token::make_keyword("FROM")),
        ];
        tokens.splice(first..=first, select);
    } else if w.value.eq_ignore_ascii_case("move") {
        tokens[first] = at(Token::make_keyword("FETCH"));
    }
    tokens
}

/// `BEGIN`, `START TRANSACTION`, `SET TRANSACTION` and `SET SESSION
/// CHARACTERISTICS AS TRANSACTION` without their `[NOT] DEFERRABLE` mode,
/// which sqlparser does not read: it only decides whether a serializable
/// read-only transaction waits for a safe snapshot, nothing a rule or mask
/// looks at.
fn drop_deferrable(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_word = |t: &TokenWithSpan, k: &str| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    // Every statement passes here: look at its first words only when it
    // has the keyword at all.
    if !tokens.iter().any(|t| is_word(t, "deferrable")) {
        return tokens;
    }
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
            Token::Whitespace(_) => None,
            _ => Some(String::new()),
        })
        .take(5)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let transaction = matches!(
        words.as_slice(),
        ["begin", ..]
            | ["start", "transaction", ..]
            | ["set", "transaction", ..]
            | ["set", "session", "characteristics", ..]
    );
    if !transaction {
        return tokens;
    }
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if is_word(&t, "deferrable") {
            // `NOT DEFERRABLE`: the NOT goes too, and a comma before the
            // mode (`READ ONLY, DEFERRABLE`).
            while out
                .last()
                .is_some_and(|l| matches!(l.token, Token::Whitespace(_)))
            {
                out.pop();
            }
            if out.last().is_some_and(|l| is_word(l, "not")) {
                out.pop();
                while out
                    .last()
                    .is_some_and(|l| matches!(l.token, Token::Whitespace(_)))
                {
                    out.pop();
                }
            }
            if out.last().is_some_and(|l| l.token == Token::Comma) {
                out.pop();
            }
            continue;
        }
        out.push(t);
    }
    out
}

/// In a COPY statement's option list (the parenthesized group after its
/// FROM/TO target), `ON` and `OFF` become `TRUE` and `FALSE`: PostgreSQL
/// takes either spelling of a boolean option (`FREEZE ON`, `HEADER off`),
/// sqlparser only the second.
fn rewrite_copy_options(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_word = |t: &Token, k: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let Some(first) = tokens
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
    else {
        return tokens;
    };
    if !is_word(&tokens[first].token, "copy") {
        return tokens;
    }
    let mut depth = 0usize;
    let mut past_target = false;
    for t in tokens.iter_mut().skip(first + 1) {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            tok if depth == 0 && (is_word(tok, "from") || is_word(tok, "to")) => past_target = true,
            tok if depth == 1 && past_target && is_word(tok, "on") => {
                t.token = Token::make_keyword("TRUE")
            }
            tok if depth == 1 && past_target && is_word(tok, "off") => {
                t.token = Token::make_keyword("FALSE")
            }
            _ => {}
        }
    }
    tokens
}

/// `OPERATOR(pg_catalog.~)` becomes `~`: the explicit spelling of a
/// built-in operator (pg_dump and psql write it so that a user's search_path
/// cannot divert it), which sqlparser does not read. Same meaning, so the
/// rules and masks check the statement as the server runs it. An operator of
/// any other schema may run any function: left alone, so the statement
/// stays unparsable and is denied.
fn unqualify_builtin_operators(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_space = |t: &TokenWithSpan| matches!(t.token, Token::Whitespace(_));
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if let Some((op, next)) = builtin_operator_at(&tokens, i, is_space) {
            out.extend(op.into_iter().cloned());
            i = next;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}

/// At `i`, `OPERATOR ( pg_catalog . <operator tokens> )`: the operator's
/// tokens and the index after the `)`.
fn builtin_operator_at(
    tokens: &[TokenWithSpan],
    i: usize,
    is_space: impl Fn(&TokenWithSpan) -> bool,
) -> Option<(Vec<&TokenWithSpan>, usize)> {
    let Token::Word(w) = &tokens[i].token else {
        return None;
    };
    if w.quote_style.is_some() || !w.value.eq_ignore_ascii_case("operator") {
        return None;
    }
    let mut rest = tokens[i + 1..]
        .iter()
        .enumerate()
        .filter(|(_, t)| !is_space(t));
    let mut expect =
        |want: &dyn Fn(&Token) -> bool| rest.next().filter(|(_, t)| want(&t.token)).map(|(j, _)| j);
    expect(&|t| *t == Token::LParen)?;
    expect(&|t| match t {
        Token::Word(w) => {
            w.value.eq_ignore_ascii_case("pg_catalog")
                && (w.quote_style.is_none() || w.value == "pg_catalog")
        }
        _ => false,
    })?;
    expect(&|t| *t == Token::Period)?;
    let mut op = Vec::new();
    for (j, t) in rest {
        match &t.token {
            Token::RParen if !op.is_empty() => return Some((op, i + 1 + j + 1)),
            Token::Word(_)
            | Token::Number(..)
            | Token::LParen
            | Token::RParen
            | Token::Comma
            | Token::SemiColon
            | Token::EOF
            | Token::SingleQuotedString(_) => return None,
            _ => op.push(t),
        }
    }
    None
}

/// Splits a token stream on top-level `;`, dropping pieces that hold only
/// whitespace and comments. Dollar-quoted bodies are single tokens, so their
/// semicolons do not split.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            pieces.push(std::mem::take(&mut current));
        } else {
            current.push(token);
        }
    }
    pieces.push(current);
    pieces
        .into_iter()
        .filter(|p| {
            p.iter()
                .any(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        })
        .collect()
}

/// Most operators one statement may hold. sqlparser bounds nesting
/// (parentheses, calls, subqueries) with its recursion limit, but a flat
/// chain like `1 + 1 + ... + 1` or `a OR b OR ...` becomes a left-leaning
/// tree as deep as the chain is long, and dropping it recurses once per
/// level: about 20,000 levels overflow a 2 MiB (tokio worker) stack in a
/// debug build. PostgreSQL itself refuses such statements ("stack depth limit
/// exceeded"), so refusing them as unparsable costs nothing real.
pub const MAX_OPERATORS: usize = 10_000;

/// Upper bound on how deep a statement's expression trees can be, ignoring
/// the nesting the parser's recursion limit already bounds: every token
/// that can join two expressions or wrap one. Commas, literals and names do
/// not count, so long IN lists and multi-row VALUES stay analyzable.
fn operator_count(tokens: &[TokenWithSpan]) -> usize {
    tokens
        .iter()
        .filter(|t| match &t.token {
            Token::Word(w) => {
                w.quote_style.is_none()
                    && OPERATOR_KEYWORDS
                        .iter()
                        .any(|k| w.value.eq_ignore_ascii_case(k))
            }
            Token::Whitespace(_)
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::Period
            | Token::SemiColon
            | Token::EOF
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_) => false,
            _ => true,
        })
        .count()
}

/// Keywords that chain expressions or queries into deeper trees.
const OPERATOR_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "is",
    "isnull",
    "notnull",
    "like",
    "ilike",
    "similar",
    "between",
    "in",
    "at",
    "collate",
    "overlaps",
    "escape",
    "union",
    "except",
    "intersect",
    "case",
    "when",
    "any",
    "all",
    "some",
];

/// A leading word of a statement: lower-cased value, and whether it was
/// quoted (a quoted word is an identifier, never a keyword).
struct Word {
    value: String,
    quoted: bool,
}

/// Kind from the leading keywords, for statements sqlparser cannot parse
/// and for statements whose AST does not keep the distinction (ALTER SYSTEM,
/// SET ROLE spelled as a variable).
fn kind_from_tokens(tokens: &[TokenWithSpan]) -> String {
    let words: Vec<Word> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::LParen))
        .take(8)
        .map_while(|t| match &t.token {
            Token::Word(w) => Some(Word {
                value: w.value.to_ascii_lowercase(),
                quoted: w.quote_style.is_some(),
            }),
            _ => None,
        })
        .collect();
    let has_program = tokens.iter().any(|t| match &t.token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("program"),
        _ => false,
    });
    kind_from_words(&words, has_program)
}

/// Object-type words that make up the kind of CREATE/DROP/ALTER, so that a
/// rule can say `create extension` or `alter system` and plain `create`
/// still matches them all.
const OBJECT_TYPE_WORDS: &[&str] = &[
    "access",
    "aggregate",
    "cast",
    "collation",
    "configuration",
    "conversion",
    "data",
    "database",
    "default",
    "dictionary",
    "domain",
    "event",
    "extension",
    "foreign",
    "function",
    "group",
    "index",
    "language",
    "large",
    "mapping",
    "materialized",
    "method",
    "object",
    "operator",
    "owned",
    "parser",
    "policy",
    "privileges",
    "procedure",
    "publication",
    "role",
    "routine",
    "rule",
    "schema",
    "search",
    "sequence",
    "server",
    "statistics",
    "subscription",
    "system",
    "table",
    "tablespace",
    "template",
    "text",
    "transform",
    "trigger",
    "type",
    "user",
    "view",
    "wrapper",
];

/// Object-type words that are followed by more of the type.
const OBJECT_TYPE_PREFIXES: &[&str] = &[
    "access",
    "data",
    "default",
    "event",
    "foreign",
    "large",
    "materialized",
    "search",
    "text",
    "user",
];

/// Modifiers between CREATE/DROP and the object type that PostgreSQL's
/// command tag leaves out (`CREATE OR REPLACE FUNCTION` is `CREATE FUNCTION`).
const DDL_MODIFIERS: &[&str] = &[
    "or",
    "replace",
    "temp",
    "temporary",
    "unlogged",
    "unique",
    "global",
    "local",
    "recursive",
    "trusted",
    "procedural",
];

fn kind_from_words(words: &[Word], has_program: bool) -> String {
    let Some(first) = words.first() else {
        return String::new();
    };
    let rest = &words[1..];
    let unquoted = |i: usize, s: &str| rest.get(i).is_some_and(|w| !w.quoted && w.value == s);
    match first.value.as_str() {
        "create" | "drop" | "alter" => {
            let mut kind = first.value.clone();
            let mut i = 0;
            let mut temporary = false;
            while rest
                .get(i)
                .is_some_and(|w| !w.quoted && DDL_MODIFIERS.contains(&w.value.as_str()))
            {
                temporary |= matches!(rest[i].value.as_str(), "temp" | "temporary");
                i += 1;
            }
            // Session-local objects: `create temporary table|view|sequence`.
            if first.value == "create"
                && temporary
                && rest.get(i).is_some_and(|w| {
                    !w.quoted && matches!(w.value.as_str(), "table" | "view" | "sequence")
                })
            {
                return format!("create temporary {}", rest[i].value);
            }
            // Object types are one word, or a prefix word and more
            // (`materialized view`, `foreign data wrapper`), so that a table
            // named `data` does not end up in the kind.
            while let Some(w) = rest.get(i) {
                if w.quoted || !OBJECT_TYPE_WORDS.contains(&w.value.as_str()) {
                    break;
                }
                kind.push(' ');
                kind.push_str(&w.value);
                i += 1;
                if !OBJECT_TYPE_PREFIXES.contains(&w.value.as_str()) {
                    break;
                }
            }
            kind
        }
        "set" => {
            // SET [SESSION | LOCAL] ROLE / SESSION AUTHORIZATION, and the
            // same GUCs set by name: `SET role = x`, `SET "role" TO x`,
            // `SET session_authorization = x` all change the current role.
            let mut i = 0;
            if unquoted(0, "session") || unquoted(0, "local") {
                i = 1;
            }
            match rest.get(i).map(|w| w.value.as_str()) {
                Some("role") => "set role".into(),
                Some("session") if rest.get(i + 1).is_some_and(|w| w.value == "authorization") => {
                    "set session authorization".into()
                }
                // `SET SESSION AUTHORIZATION` right after SET: "session" was
                // taken as the scope above.
                Some("authorization") if i == 1 && unquoted(0, "session") => {
                    "set session authorization".into()
                }
                Some("session_authorization") => "set session authorization".into(),
                _ => "set".into(),
            }
        }
        "copy" if has_program => "copy program".into(),
        other => other.to_string(),
    }
}

/// Best-effort first word when the text cannot even be tokenized.
fn naive_kind(sql: &str) -> String {
    sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic() && c != '_')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The kind of a parsed statement: from the AST where it says more than the
/// leading keywords (a WITH query is its body; COPY target), else from them.
fn ast_kind(statement: &Statement, token_kind: &str) -> String {
    match statement {
        // `TABLE t`, read as `SELECT * FROM t`.
        Statement::Query(_) if token_kind == "table" => "table".into(),
        Statement::Query(q) => query_kind(q),
        Statement::Insert(_) => "insert".into(),
        Statement::Update(_) => "update".into(),
        Statement::Delete(_) => "delete".into(),
        Statement::Copy { target, .. } => match target {
            CopyTarget::Program { .. } => "copy program".into(),
            // A path on the database server: reads or writes its files.
            CopyTarget::File { .. } => "copy file".into(),
            _ => "copy".into(),
        },
        _ => token_kind.to_string(),
    }
}

fn query_kind(q: &Query) -> String {
    set_expr_kind(&q.body)
}

fn set_expr_kind(body: &SetExpr) -> String {
    match body {
        SetExpr::Select(_) => "select".into(),
        SetExpr::Query(q) => query_kind(q),
        SetExpr::SetOperation { left, .. } => set_expr_kind(left),
        SetExpr::Values(_) => "values".into(),
        SetExpr::Insert(_) => "insert".into(),
        SetExpr::Update(_) => "update".into(),
        SetExpr::Delete(_) => "delete".into(),
        SetExpr::Merge(_) => "merge".into(),
        SetExpr::Table(_) => "table".into(),
    }
}

/// Kind of the statement a PREPARE wraps. PostgreSQL only prepares SELECT,
/// VALUES, INSERT, UPDATE, DELETE and MERGE, which the AST tells apart;
/// anything else is `other` (and fails on the server). Not rendered with
/// `Display`, which recurses as deep as the tree.
fn prepared_kind(statement: &Statement) -> String {
    ast_kind(statement, "other")
}

fn analyze_statement(statement: &Statement, token_kind: &str) -> StatementInfo {
    let mut collector = Collector::default();
    // The visitor never breaks, so the result carries nothing.
    let _ = statement.visit(&mut collector);
    let mut info = StatementInfo {
        kind: ast_kind(statement, token_kind),
        with_clause: matches!(statement, Statement::Query(q) if q.with.is_some()),
        ..StatementInfo::default()
    };
    if let Statement::Prepare { statement, .. } = statement {
        info.prepare_body_kind = Some(prepared_kind(statement));
    }
    info.functions = collector.functions.into_iter().collect();
    info.relations = collector.relations.into_iter().collect();
    info.without_where = !collector.unfiltered.is_empty();
    info.unfiltered = collector.unfiltered;
    info.data_modifying_cte = collector.data_modifying_cte;
    info.copy_program = collector.copy_program;
    info.copy_server_file = collector.copy_server_file;
    info.settings = collector.settings.into_iter().collect();
    info
}

/// The setting-name argument of a `set_config(setting_name, new_value,
/// is_local)` call: the first one, or the one named `setting_name`.
fn set_config_name_arg(f: &sqlparser::ast::Function) -> Option<&Expr> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let first = list.args.iter().enumerate().find_map(|(i, arg)| match arg {
        FunctionArg::Unnamed(a) if i == 0 => Some(a),
        FunctionArg::Named { name, arg, .. } if ident_text(name) == "setting_name" => Some(arg),
        FunctionArg::ExprNamed {
            name: Expr::Identifier(name),
            arg,
            ..
        } if ident_text(name) == "setting_name" => Some(arg),
        _ => None,
    });
    match first {
        Some(FunctionArgExpr::Expr(e)) => Some(e),
        _ => None,
    }
}

/// A plain string literal (`'x'`, `$$x$$`).
fn string_literal(e: &Expr) -> Option<&str> {
    use sqlparser::ast::Value;
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            Value::DollarQuotedString(d) => Some(&d.value),
            _ => None,
        },
        _ => None,
    }
}

/// The setting a `set_config` call changes, lower-cased as PostgreSQL looks
/// GUCs up: a string-literal name, or `fixed` (what the call's SELECT pins
/// its column argument to, see [`pinned_set_config_names`]);
/// [`UNKNOWN_SETTING`] otherwise.
fn set_config_setting(f: &sqlparser::ast::Function, fixed: Option<&str>) -> String {
    set_config_name_arg(f)
        .and_then(string_literal)
        .or(fixed)
        .map(str::to_lowercase)
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| UNKNOWN_SETTING.into())
}

/// `SELECT set_config(name, 'v', false) FROM pg_settings WHERE name = 'x'`
/// (pg_dump since the CVE-2024-7348 fix): a select-list call whose name is
/// a column that a top-level AND term of the same SELECT's WHERE pins to a
/// literal. WHERE filters rows before the select list is computed, so the
/// call only ever sees that literal. Keyed by the call's address.
fn pinned_set_config_names(
    select: &sqlparser::ast::Select,
) -> Vec<(*const sqlparser::ast::Function, String)> {
    use sqlparser::ast::{BinaryOperator, SelectItem};
    let mut pins: Vec<(&Expr, &str)> = Vec::new();
    let mut stack: Vec<&Expr> = select.selection.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(inner) => stack.push(inner),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => stack.extend([left.as_ref(), right.as_ref()]),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (string_literal(left), string_literal(right)) {
                (None, Some(lit)) => pins.push((left, lit)),
                (Some(lit), None) => pins.push((right, lit)),
                _ => {}
            },
            _ => {}
        }
    }
    let same_column = |a: &Expr, b: &Expr| match (a, b) {
        (Expr::Identifier(x), Expr::Identifier(y)) => ident_text(x) == ident_text(y),
        (Expr::CompoundIdentifier(x), Expr::CompoundIdentifier(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| ident_text(p) == ident_text(q))
        }
        _ => false,
    };
    select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::UnnamedExpr(Expr::Function(f))
            | SelectItem::ExprWithAlias {
                expr: Expr::Function(f),
                ..
            } => Some(f),
            _ => None,
        })
        .filter_map(|f| {
            let arg = set_config_name_arg(f)?;
            let (_, lit) = pins.iter().find(|(col, _)| same_column(col, arg))?;
            Some((f as *const _, lit.to_string()))
        })
        .collect()
}

/// Walks the whole AST once, collecting what policy matches on.
#[derive(Default)]
struct Collector {
    functions: BTreeSet<String>,
    relations: BTreeSet<String>,
    unfiltered: Vec<Unfiltered>,
    data_modifying_cte: bool,
    copy_program: bool,
    copy_server_file: bool,
    settings: BTreeSet<String>,
    /// `set_config` calls whose setting name their SELECT's WHERE pins.
    pinned_settings: Vec<(*const sqlparser::ast::Function, String)>,
    /// Names of table functions already recorded as functions; the visitor
    /// also offers them as relations, which they are not.
    table_functions: Vec<*const ObjectName>,
}

impl Collector {
    fn add_function(&mut self, name: &ObjectName) {
        add_names(&mut self.functions, name);
    }

    fn add_relation(&mut self, name: &ObjectName) {
        add_names(&mut self.relations, name);
    }

    fn add_ident_relation(&mut self, ident: &Ident) {
        self.relations.insert(ident_text(ident));
    }

    fn add_unfiltered(&mut self, kind: &str, relation: Option<&ObjectName>) {
        self.unfiltered.push(Unfiltered {
            kind: kind.into(),
            relation: relation.map(object_name_text).unwrap_or_default(),
        });
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.add_function(&f.name);
            let last = f.name.0.last().map(|part| match part {
                ObjectNamePart::Identifier(ident) => ident_text(ident),
                other => other.to_string().to_lowercase(),
            });
            if last.as_deref() == Some("set_config") {
                let fixed = self
                    .pinned_settings
                    .iter()
                    .find(|(p, _)| std::ptr::eq(*p, f))
                    .map(|(_, name)| name.as_str());
                self.settings.insert(set_config_setting(f, fixed));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM pg_ls_dir('.')` parses as a table with arguments.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                self.add_function(name);
                self.table_functions.push(name as *const ObjectName);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if !self
            .table_functions
            .iter()
            .any(|p| std::ptr::eq(*p, relation))
        {
            self.add_relation(relation);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_ref() {
            self.pinned_settings.extend(pinned_set_config_names(select));
        }
        if let Some(with) = &query.with {
            if with
                .cte_tables
                .iter()
                .any(|cte| modifies_data(&cte.query.body))
            {
                self.data_modifying_cte = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Call(f) => self.add_function(&f.name),
            Statement::Delete(d) if d.selection.is_none() => {
                let tables = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let target = d.tables.first().or_else(|| {
                    tables.first().and_then(|t| match &t.relation {
                        TableFactor::Table { name, .. } => Some(name),
                        _ => None,
                    })
                });
                self.add_unfiltered("delete", target);
            }
            Statement::Update(u) if u.selection.is_none() => {
                let target = match &u.table.relation {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                };
                self.add_unfiltered("update", target);
            }
            Statement::Copy { source, target, .. } => {
                if let sqlparser::ast::CopySource::Table { table_name, .. } = source {
                    self.add_relation(table_name);
                }
                match target {
                    CopyTarget::Program { .. } => self.copy_program = true,
                    CopyTarget::File { .. } => self.copy_server_file = true,
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
            }
            // DDL: the object created, dropped or altered is a relation too,
            // so `relations = ["pg_authid"]` catches `DROP TABLE pg_authid`.
            Statement::Drop { names, table, .. } => {
                for name in names {
                    self.add_relation(name);
                }
                if let Some(table) = table {
                    self.add_relation(table);
                }
            }
            Statement::CreateTable(t) => self.add_relation(&t.name),
            Statement::CreateView(v) => self.add_relation(&v.name),
            Statement::AlterTable(t) => self.add_relation(&t.name),
            Statement::CreateIndex(i) => {
                if let Some(name) = &i.name {
                    self.add_relation(name);
                }
                self.add_relation(&i.table_name);
            }
            Statement::CreateExtension(e) => self.add_ident_relation(&e.name),
            Statement::Set(set) => {
                use sqlparser::ast::Set;
                match set {
                    Set::SingleAssignment { variable, .. } => {
                        self.settings
                            .insert(object_name_text(variable).to_lowercase());
                    }
                    Set::ParenthesizedAssignments { variables, .. } => {
                        for v in variables {
                            self.settings.insert(object_name_text(v).to_lowercase());
                        }
                    }
                    Set::MultipleAssignments { assignments } => {
                        for a in assignments {
                            self.settings
                                .insert(object_name_text(&a.name).to_lowercase());
                        }
                    }
                    Set::SetRole { .. } => {
                        self.settings.insert("role".into());
                    }
                    Set::SetSessionAuthorization(_) => {
                        self.settings.insert("session_authorization".into());
                    }
                    Set::SetTimeZone { .. } => {
                        self.settings.insert("timezone".into());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn modifies_data(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::Query(q) => modifies_data(&q.body),
        SetExpr::SetOperation { left, right, .. } => modifies_data(left) || modifies_data(right),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => false,
    }
}

/// PostgreSQL folds unquoted identifiers to lower case and keeps quoted ones.
pub(crate) fn ident_text(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn object_name_text(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident_text(ident),
            other => other.to_string().to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Inserts the name as written and, when qualified, its last part.
fn add_names(set: &mut BTreeSet<String>, name: &ObjectName) {
    let full = object_name_text(name);
    if let Some(last) = name.0.last() {
        let last = match last {
            ObjectNamePart::Identifier(ident) => ident_text(ident),
            other => other.to_string().to_lowercase(),
        };
        if last != full {
            set.insert(last);
        }
    }
    set.insert(full);
}

/// A case-insensitive glob where `*` matches any run of characters
/// (including dots, so `*.secrets` matches `public.secrets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.to_lowercase(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.pattern.as_bytes(), text.to_lowercase().as_bytes())
    }
}

/// Iterative wildcard match (`*` any run, everything else literal, case as
/// given) with single backtrack point: linear in practice and no recursion,
/// so hostile names cannot blow the stack. Shared with the mask column
/// patterns, which need exact case for quoted names.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The SQL criteria of one `[[rule]]`, ready to match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlRule {
    statements: Vec<String>,
    functions: Vec<Glob>,
    relations: Vec<Glob>,
    unparsable: bool,
    without_where: Vec<String>,
    settings: Vec<Glob>,
}

/// Why a rule matched: the statement (when one is to blame) and a reason
/// fit for the denial message and the audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub statement_index: Option<usize>,
    pub reason: String,
}

impl SqlRule {
    pub fn from_config(m: &SqlMatch) -> Self {
        let lower = |v: &Option<Vec<String>>| {
            v.iter()
                .flatten()
                .map(|s| {
                    s.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_lowercase()
                })
                .collect()
        };
        let globs = |v: &Option<Vec<String>>| v.iter().flatten().map(|s| Glob::new(s)).collect();
        SqlRule {
            statements: lower(&m.statements),
            functions: globs(&m.functions),
            relations: globs(&m.relations),
            unparsable: m.unparsable.unwrap_or(false),
            without_where: lower(&m.without_where),
            settings: globs(&m.settings),
        }
    }

    /// The first criterion that any statement meets, or `None`.
    pub fn matches(&self, a: &Analysis) -> Option<Match> {
        for (i, s) in a.statements.iter().enumerate() {
            let at = |reason: String| {
                Some(Match {
                    statement_index: Some(i),
                    reason,
                })
            };
            if let Some(e) = self.statements.iter().find(|e| kind_matches(s, e)) {
                return at(format!(
                    "{} statement (rule lists \"{e}\")",
                    s.kind.to_uppercase()
                ));
            }
            for f in &s.functions {
                if self.functions.iter().any(|g| g.matches(f)) {
                    return at(format!("calls {f}"));
                }
            }
            for r in &s.relations {
                if self.relations.iter().any(|g| g.matches(r)) {
                    return at(format!("uses relation {r}"));
                }
            }
            if !self.settings.is_empty() {
                for setting in &s.settings {
                    if setting == UNKNOWN_SETTING {
                        return at(
                            "set_config with a setting name that is not a string literal \
                             (it could change any setting)"
                                .into(),
                        );
                    }
                    if self.settings.iter().any(|g| g.matches(setting)) {
                        return at(format!("changes the setting {setting}"));
                    }
                }
            }
            if let Some(u) = s
                .unfiltered
                .iter()
                .find(|u| self.without_where.contains(&u.kind))
            {
                return at(format!(
                    "{} without WHERE on {}",
                    u.kind.to_uppercase(),
                    u.relation
                ));
            }
            if self.unparsable {
                if let Some(err) = &s.error {
                    return at(format!("unparsable SQL: {err}"));
                }
            }
        }
        if self.unparsable {
            if let Some(err) = &a.unparsable {
                return Some(Match {
                    statement_index: None,
                    reason: format!("unparsable SQL: {err}"),
                });
            }
        }
        None
    }
}

/// `alter` matches `alter system` (word-boundary prefix); `with` matches any
/// statement that starts with a WITH clause; `prepare`'s body kind counts
/// too, so `delete` catches `PREPARE p AS DELETE ...`. Session-local
/// objects (`create temporary table|view|sequence`, gone when the session
/// ends) are not schema changes: only an entry that says `temporary`
/// matches them, not plain `create`.
fn kind_matches(s: &StatementInfo, entry: &str) -> bool {
    let prefix = |kind: &str| {
        let prefixed = kind == entry
            || kind
                .strip_prefix(entry)
                .is_some_and(|rest| rest.starts_with(' '));
        prefixed && (!kind.starts_with("create temporary ") || entry.contains("temporary"))
    };
    prefix(&s.kind)
        // `TABLE t` is `SELECT * FROM t`: a rule on selects covers it.
        || (entry == "select" && s.kind == "table")
        || (entry == "with" && s.with_clause)
        || s.prepare_body_kind.as_deref().is_some_and(prefix)
}

#[cfg(test)]
mod tests;
