//! Masking: secrets rewritten in replies before the client sees them, as
//! configured by `[[mask]]` sections.
//!
//! A mask selects values by where they are (PostgreSQL `columns`, Redis
//! `keys`, HTTP `json` paths) and/or by what they look like (`detectors`),
//! and rewrites them with a [`MaskStrategy`](crate::config::MaskStrategy)
//! ([`apply`]). The protocol handlers decide where values are; this module
//! holds what does not depend on the protocol: strategies, value detectors
//! ([`Detectors`]) and column-name patterns ([`ColumnPatterns`]).

mod detectors;
mod strategy;

pub use detectors::Detectors;
pub use strategy::{apply, Masked, REDACTED};

use crate::audit::hostkey::HostKey;
use crate::config::{MaskConfig, MaskStrategy};

/// The `[[mask]]` sections that apply to `store` (those without `stores`
/// apply to every store), in file order.
pub fn sections_for<'a>(
    store: &'a str,
    masks: &'a [MaskConfig],
) -> impl Iterator<Item = &'a MaskConfig> + 'a {
    masks.iter().filter(move |m| {
        m.stores
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s == store))
    })
}

/// The value detectors of one store: those of every `[[mask]]` section
/// that applies to it, each with its section's strategy, compiled once.
#[derive(Debug, Clone, Default)]
pub struct StoreDetectors {
    list: Vec<(Detectors, MaskStrategy)>,
}

impl StoreDetectors {
    pub fn new(store: &str, masks: &[MaskConfig]) -> anyhow::Result<StoreDetectors> {
        let mut list = Vec::new();
        for m in sections_for(store, masks) {
            if let Some(names) = &m.detectors {
                let d = Detectors::new(names)?;
                if !d.is_empty() {
                    list.push((d, m.strategy));
                }
            }
        }
        Ok(StoreDetectors { list })
    }

    /// One set of detectors with one strategy (tests, fuzzing).
    pub fn single(detectors: Detectors, strategy: MaskStrategy) -> StoreDetectors {
        StoreDetectors {
            list: vec![(detectors, strategy)],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Runs every section's detectors over `text` in turn, each over what
    /// the previous ones left: the masked value and the number of
    /// credentials replaced, or `None` when nothing was found (the caller
    /// then forwards the original bytes). No copy is made until something
    /// matches: every text value of every reply goes through here.
    pub fn scan(&self, text: &str, key: &HostKey) -> Option<(Masked, u64)> {
        let mut current: Option<(Masked, u64)> = None;
        for (d, strategy) in &self.list {
            let input = match &current {
                Some((Masked::Value(b), _)) => std::str::from_utf8(b).ok()?,
                Some((Masked::Null, _)) => return current,
                None => text,
            };
            if let Some((m, n)) = d.mask(input, *strategy, key) {
                let total = current.as_ref().map_or(0, |c| c.1) + n as u64;
                current = Some((m, total));
            }
        }
        current
    }
}

/// Column-name patterns of `[[mask]]` `columns` (globs where `*` matches any
/// run; optionally `table.column`, `schema.table.column`), compiled.
/// Matching is case-insensitive on unquoted identifiers.
///
/// A pattern is split into parts at dots outside double quotes. An unquoted
/// part matches case-insensitively, as PostgreSQL folds unquoted names, so
/// `password` masks `password`, `Password` and `PASSWORD` (erring on the
/// side of masking). A part in double quotes (`"Password"`, `""` for a
/// quote inside) matches with its exact case; `*` is a wildcard in both. In
/// a part, `*` does not cross a dot: it stays within the schema, table or
/// column name. With more than three parts, the leading ones (a database
/// name) are ignored: a session only sees its own database.
#[derive(Debug, Clone, Default)]
pub struct ColumnPatterns {
    patterns: Vec<ColumnPattern>,
}

#[derive(Debug, Clone)]
struct ColumnPattern {
    schema: Option<NamePart>,
    table: Option<NamePart>,
    column: NamePart,
}

/// One part of a pattern: a glob, lower-cased when matching ignores case.
#[derive(Debug, Clone)]
struct NamePart {
    glob: String,
    exact_case: bool,
}

impl NamePart {
    fn parse(part: &str) -> NamePart {
        match part
            .strip_prefix('"')
            .and_then(|p| p.strip_suffix('"'))
            .filter(|_| part.len() >= 2)
        {
            Some(quoted) => NamePart {
                glob: quoted.replace("\"\"", "\""),
                exact_case: true,
            },
            None => NamePart {
                glob: part.to_lowercase(),
                exact_case: false,
            },
        }
    }

    fn matches(&self, name: &str) -> bool {
        // Names are nearly always lower-case ASCII already: no allocation.
        let folded = name.is_ascii() && !name.bytes().any(|b| b.is_ascii_uppercase());
        if self.exact_case || folded {
            crate::policy::sql::glob_match(self.glob.as_bytes(), name.as_bytes())
        } else {
            crate::policy::sql::glob_match(self.glob.as_bytes(), name.to_lowercase().as_bytes())
        }
    }
}

/// Splits at dots outside double quotes.
fn split_parts(pattern: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in pattern.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                parts.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&pattern[start..]);
    parts
}

impl ColumnPatterns {
    pub fn new(patterns: &[String]) -> ColumnPatterns {
        let patterns = patterns
            .iter()
            .map(|p| {
                let mut parts: Vec<NamePart> =
                    split_parts(p).into_iter().map(NamePart::parse).collect();
                let column = parts.pop().expect("split gives at least one part");
                let table = parts.pop();
                let schema = parts.pop();
                ColumnPattern {
                    schema,
                    table,
                    column,
                }
            })
            .collect();
        ColumnPatterns { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Does a column match by its name alone (patterns without a table
    /// part)? For result columns that are not plain table columns
    /// (expressions, or relations not resolved).
    pub fn matches_name(&self, column: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.table.is_none() && p.column.matches(column))
    }

    /// Does a column of a known relation match (any pattern: bare name,
    /// `table.column`, `schema.table.column`)? `schema` is `None` when the
    /// caller does not know it; a pattern with a schema part then matches on
    /// its table and column alone (erring on the side of masking).
    pub fn matches(&self, schema: Option<&str>, table: &str, column: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.column.matches(column)
                && p.table.as_ref().is_none_or(|t| t.matches(table))
                && match (&p.schema, schema) {
                    (Some(ps), Some(s)) => ps.matches(s),
                    _ => true,
                }
        })
    }

    /// Could `column` match some pattern for SOME table (a bare name, or
    /// any `table.column` pattern whose column part matches)? For static SQL
    /// analysis, which cannot always tell which table a column comes from:
    /// it errs on the side of matching.
    pub fn may_match(&self, column: &str) -> bool {
        self.patterns.iter().any(|p| p.column.matches(column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> ColumnPatterns {
        ColumnPatterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bare_names_and_globs() {
        let c = pats(&["password", "*_token", "api*key*"]);
        assert!(!c.is_empty());
        assert!(ColumnPatterns::new(&[]).is_empty());
        for n in [
            "password",
            "PASSWORD",
            "Password",
            "access_token",
            "api_key",
            "apikeys",
        ] {
            assert!(c.matches_name(n), "{n}");
            assert!(c.may_match(n), "{n}");
            assert!(c.matches(Some("public"), "users", n), "{n}");
            assert!(c.matches(None, "users", n), "{n}");
        }
        for n in ["passwords", "token", "user", "email", "tokens_used"] {
            assert!(!c.matches_name(n), "{n}");
            assert!(!c.may_match(n), "{n}");
            assert!(!c.matches(Some("public"), "t", n), "{n}");
        }
    }

    #[test]
    fn table_and_schema_qualified() {
        let c = pats(&["users.api_key", "vault.*.secret", "x.y.z.w"]);
        assert!(!c.matches_name("api_key"));
        assert!(c.may_match("api_key"));
        assert!(c.may_match("SECRET"));
        assert!(c.matches(Some("public"), "users", "api_key"));
        assert!(c.matches(None, "Users", "API_KEY"));
        assert!(!c.matches(Some("public"), "orders", "api_key"));
        assert!(c.matches(Some("vault"), "anything", "secret"));
        assert!(!c.matches(Some("public"), "anything", "secret"));
        // Unknown schema: match on table and column.
        assert!(c.matches(None, "anything", "secret"));
        // Four parts: the database name is ignored.
        assert!(c.matches(Some("y"), "z", "w"));
        // `*` stays within its part.
        let c = pats(&["*secret"]);
        assert!(c.matches(Some("s"), "t", "my_secret"));
        let c = pats(&["users*"]);
        assert!(!c.may_match("password"));
    }

    #[test]
    fn quoted_parts_keep_their_case() {
        let c = pats(&["\"Password\"", "\"My.Table\".\"Col\"\"x\""]);
        assert!(c.matches_name("Password"));
        assert!(!c.matches_name("password"));
        assert!(c.matches(None, "My.Table", "Col\"x"));
        assert!(!c.matches(None, "my.table", "Col\"x"));
        assert!(!c.matches(None, "My.Table", "col\"x"));
    }

    #[test]
    fn non_ascii_names() {
        let c = pats(&["пароль", "naïve*"]);
        assert!(c.matches_name("ПАРОЛЬ"));
        assert!(c.matches_name("Naïve_Col"));
        assert!(!c.matches_name("пароли"));
    }
}
