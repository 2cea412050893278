//! PostgreSQL utility statements sqlparser does not read, read here from
//! their tokens: VACUUM, ANALYZE, REINDEX, CLUSTER, CHECKPOINT, SET
//! CONSTRAINTS, ALTER SEQUENCE, and FETCH/MOVE in the forms sqlparser's
//! FETCH lacks (no direction, FORWARD/BACKWARD without a count, a negative
//! count).
//!
//! Each is recognized only when its tokens follow PostgreSQL 15's grammar
//! for it exactly, and only statements made of names, keywords and
//! constants are taken: none of them can call a function, hold a subquery
//! or return rows of a table, so the policy needs nothing from them but
//! their kind and the relations they name. Anything else is left to the
//! parser, and stays unparsable (denied) if it does not parse.

use std::collections::BTreeSet;

use sqlparser::ast::{Ident, ObjectName};
use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{add_names, StatementInfo};

/// The statement's kind and relations when `tokens` (one statement,
/// without its `;`) is one of the utility statements above.
pub(super) fn recognize(tokens: &[TokenWithSpan]) -> Option<StatementInfo> {
    let tokens: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    let mut c = Cursor {
        tokens: &tokens,
        at: 0,
        relations: BTreeSet::new(),
    };
    let kind = match c.keyword()?.as_str() {
        "vacuum" => c.vacuum()?,
        "analyze" | "analyse" => c.analyze()?,
        "reindex" => c.reindex()?,
        "cluster" => c.cluster()?,
        "checkpoint" => "checkpoint".to_string(),
        "set" if c.eat("constraints") => c.set_constraints()?,
        "alter" if c.eat("sequence") => c.alter_sequence()?,
        "fetch" => c.fetch("fetch")?,
        "move" => c.fetch("move")?,
        _ => return None,
    };
    if c.at != tokens.len() {
        return None;
    }
    Some(StatementInfo {
        kind,
        relations: c.relations.into_iter().collect(),
        ..StatementInfo::default()
    })
}

struct Cursor<'a> {
    tokens: &'a [&'a Token],
    at: usize,
    relations: BTreeSet<String>,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).copied()
    }

    fn peek_keyword(&self) -> Option<String> {
        match self.peek()? {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// The next token as a lower-case unquoted word, consumed.
    fn keyword(&mut self) -> Option<String> {
        let k = self.peek_keyword()?;
        self.at += 1;
        Some(k)
    }

    /// Consumes the unquoted word `k` if it is next.
    fn eat(&mut self, k: &str) -> bool {
        if self.peek_keyword().as_deref() == Some(k) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_token(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.at == self.tokens.len()
    }

    /// An identifier (quoted or not).
    fn ident(&mut self) -> Option<Ident> {
        match self.peek()? {
            Token::Word(w) => {
                let ident = match w.quote_style {
                    Some(q) => Ident::with_quote(q, w.value.clone()),
                    None => Ident::new(w.value.clone()),
                };
                self.at += 1;
                Some(ident)
            }
            _ => None,
        }
    }

    /// `name [. name ...]`.
    fn name(&mut self) -> Option<ObjectName> {
        let mut parts = vec![self.ident()?];
        while self.eat_token(&Token::Period) {
            parts.push(self.ident()?);
        }
        Some(ObjectName::from(parts))
    }

    fn relation(&mut self) -> Option<()> {
        let name = self.name()?;
        add_names(&mut self.relations, &name);
        Some(())
    }

    /// `( option [value] [, ...] )` as (lower-case name, value text); the
    /// `(` is next.
    fn options(&mut self) -> Option<Vec<(String, Option<String>)>> {
        if !self.eat_token(&Token::LParen) {
            return None;
        }
        let mut options = Vec::new();
        loop {
            let name = self.keyword()?;
            let value = match self.peek()? {
                Token::Comma | Token::RParen => None,
                Token::Word(w) => {
                    let v = w.value.to_ascii_lowercase();
                    self.at += 1;
                    Some(v)
                }
                Token::Number(n, _) => {
                    let v = n.clone();
                    self.at += 1;
                    Some(v)
                }
                Token::SingleQuotedString(s) => {
                    let v = s.to_ascii_lowercase();
                    self.at += 1;
                    Some(v)
                }
                _ => return None,
            };
            options.push((name, value));
            if self.eat_token(&Token::RParen) {
                return Some(options);
            }
            if !self.eat_token(&Token::Comma) {
                return None;
            }
        }
    }

    /// `table [ ( column [, ...] ) ] [, ...]`, possibly none.
    fn tables_and_columns(&mut self) -> Option<()> {
        if self.done() {
            return Some(());
        }
        loop {
            self.relation()?;
            if self.eat_token(&Token::LParen) {
                loop {
                    self.ident()?;
                    if self.eat_token(&Token::RParen) {
                        break;
                    }
                    if !self.eat_token(&Token::Comma) {
                        return None;
                    }
                }
            }
            if self.done() {
                return Some(());
            }
            if !self.eat_token(&Token::Comma) {
                return None;
            }
        }
    }

    /// `VACUUM [ ( option [, ...] ) ] [ FULL ] [ FREEZE ] [ VERBOSE ]
    /// [ ANALYZE ] [ table_and_columns [, ...] ]`. The kind is `vacuum
    /// full` when FULL is on (it rewrites the table under an exclusive lock).
    fn vacuum(&mut self) -> Option<String> {
        let mut full = false;
        if self.peek() == Some(&Token::LParen) {
            for (name, value) in self.options()? {
                if name == "full" {
                    full = !matches!(value.as_deref(), Some("false" | "off" | "0" | "no"));
                }
            }
        } else {
            for word in ["full", "freeze", "verbose", "analyze"] {
                let hit = self.eat(word) || (word == "analyze" && self.eat("analyse"));
                full |= hit && word == "full";
            }
        }
        self.tables_and_columns()?;
        Some(if full { "vacuum full" } else { "vacuum" }.to_string())
    }

    /// `ANALYZE [ ( option [, ...] ) | VERBOSE ] [ table_and_columns [, ...] ]`.
    fn analyze(&mut self) -> Option<String> {
        if self.peek() == Some(&Token::LParen) {
            self.options()?;
        } else {
            self.eat("verbose");
        }
        self.tables_and_columns()?;
        Some("analyze".to_string())
    }

    /// `REINDEX [ ( option [, ...] ) ] { INDEX | TABLE | SCHEMA | DATABASE |
    /// SYSTEM } [ CONCURRENTLY ] [ name ]`.
    fn reindex(&mut self) -> Option<String> {
        if self.peek() == Some(&Token::LParen) {
            self.options()?;
        }
        let object = self.keyword()?;
        if !matches!(
            object.as_str(),
            "index" | "table" | "schema" | "database" | "system"
        ) {
            return None;
        }
        self.eat("concurrently");
        if !self.done() {
            self.relation()?;
        }
        Some("reindex".to_string())
    }

    /// `CLUSTER [ ( option [, ...] ) | VERBOSE ] [ table [ USING index ] ]`,
    /// and the old `CLUSTER [ VERBOSE ] index ON table`.
    fn cluster(&mut self) -> Option<String> {
        if self.peek() == Some(&Token::LParen) {
            self.options()?;
        } else {
            self.eat("verbose");
        }
        if !self.done() {
            self.relation()?;
            if self.eat("using") || self.eat("on") {
                self.relation()?;
            }
        }
        Some("cluster".to_string())
    }

    /// `SET CONSTRAINTS { ALL | name [, ...] } { DEFERRED | IMMEDIATE }`.
    fn set_constraints(&mut self) -> Option<String> {
        if !self.eat("all") {
            loop {
                self.name()?;
                if !self.eat_token(&Token::Comma) {
                    break;
                }
            }
        }
        if !(self.eat("deferred") || self.eat("immediate")) {
            return None;
        }
        Some("set constraints".to_string())
    }

    /// `ALTER SEQUENCE [ IF EXISTS ] name` and its options: only words,
    /// numbers, signs and dotted names (INCREMENT BY 2, OWNED BY t.id,
    /// RESTART WITH 5, AS bigint, OWNER TO r, RENAME TO s, SET SCHEMA x,
    /// SET LOGGED). The table of OWNED BY is a relation too.
    fn alter_sequence(&mut self) -> Option<String> {
        if self.eat("if") && !self.eat("exists") {
            return None;
        }
        self.relation()?;
        while let Some(t) = self.peek() {
            match t {
                Token::Word(w)
                    if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("owned") =>
                {
                    self.at += 1;
                    if !self.eat("by") {
                        return None;
                    }
                    if !self.eat("none") {
                        let name = self.name()?;
                        // `table.column`: the table is the relation.
                        let mut parts = name.0;
                        if parts.len() > 1 {
                            parts.pop();
                        }
                        add_names(&mut self.relations, &ObjectName(parts));
                    }
                }
                Token::Word(_) | Token::Number(..) | Token::Minus | Token::Plus | Token::Period => {
                    self.at += 1
                }
                _ => return None,
            }
        }
        Some("alter sequence".to_string())
    }

    /// `FETCH|MOVE [ direction ] [ FROM | IN ] cursor`, where direction is
    /// NEXT, PRIOR, FIRST, LAST, ABSOLUTE n, RELATIVE n, n, ALL, FORWARD
    /// [ n | ALL ] or BACKWARD [ n | ALL ]. The cursor is not a relation
    /// (its query was checked when it was declared).
    fn fetch(&mut self, kind: &str) -> Option<String> {
        let count = |c: &mut Self| -> bool {
            let _ = c.eat_token(&Token::Minus) || c.eat_token(&Token::Plus);
            match c.peek() {
                Some(Token::Number(..)) => {
                    c.at += 1;
                    true
                }
                _ => false,
            }
        };
        match self.peek_keyword().as_deref() {
            Some("next" | "prior" | "first" | "last") => {
                self.at += 1;
            }
            Some("absolute" | "relative") => {
                self.at += 1;
                if !count(self) {
                    return None;
                }
            }
            Some("forward" | "backward") => {
                self.at += 1;
                if !self.eat("all") {
                    count(self);
                }
            }
            Some("all") => {
                self.at += 1;
            }
            _ => {
                count(self);
            }
        }
        let _ = self.eat("from") || self.eat("in");
        self.ident()?;
        Some(kind.to_string())
    }
}
