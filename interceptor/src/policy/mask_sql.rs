//! Column masking in SQL: which columns are masked in one database, and
//! whether a statement could get their values past output-side masking.
//!
//! The proxy masks result columns by the `(table OID, attnum)` PostgreSQL
//! reports for each of them in RowDescription. PostgreSQL tracks that origin
//! for a plain column reference through aliases, subqueries in FROM and WITH
//! queries, so `SELECT *`, `SELECT password AS p` and
//! `SELECT p FROM (SELECT password p FROM users) s` are all masked on the way
//! out. A value computed from a masked column (`upper(password)`,
//! `password::text`, `row_to_json(u)`), or one that decides which rows come
//! back or in which order (`WHERE password LIKE 'a%'`, `ORDER BY password`),
//! has no origin, so [`check`] denies such statements before they reach the
//! server.
//!
//! [`MaskCatalog`] says which relations hold masked columns. It is built from
//! the rows of [`CATALOG_SQL`], which the proxy runs on the client's own
//! connection, and a [`ColumnMatcher`] (the configured column patterns). A
//! view that reads a masked column, directly or through other views, is
//! *tainted*: all its columns count as masked, and statements may not name it
//! at all, because the expressions inside the view are invisible here.
//!
//! Like the analyzer in [`super::sql`], the check errs on the side of
//! denying. Names are resolved against every FROM item of the whole statement
//! rather than the exact scope, so a reference matches whatever it could
//! mean; a reference that cannot be placed counts as masked when a pattern
//! could name it; and what cannot be seen into (dynamic SQL, function bodies
//! in languages other than SQL and PL/pgSQL, SQL passed as text to
//! `query_to_xml` and friends, text that does not parse) is denied while
//! masking is configured.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnDef, ColumnOption, CopySource,
    CreateFunctionBody, Distinct, Expr, ForeignKeyConstraint, FromTable, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, InTarget, JoinConstraint, JoinOperator,
    ObjectName, ObjectNamePart, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableConstraint, TableFactor,
    TableObject, TableWithJoins, UpdateTableFromKind, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::sql::{analyze_parsed, ident_text, MAX_OPERATORS};

/// The catalog lookup: one read-only query over `pg_catalog` tables only,
/// for the simple Query protocol, returning text columns
/// `kind, oid, nspname, relname, relkind, attnum, attname, ref_oid,
/// ref_attnum` in that order. Rows of three kinds:
///
/// * `c`: one column (attnum > 0, not dropped) of a table, partitioned
///   table, view, materialized view or foreign table outside `pg_catalog`,
///   `information_schema` and the `pg_toast*` schemas. `ref_*` are NULL.
/// * `d`: view or materialized view `oid` reads column `ref_attnum` of
///   relation `ref_oid` (from the view's rewrite rule in `pg_depend`). A
///   `ref_attnum` of 0 is listed only when the view's rule holds a whole-row
///   reference (`row_to_json(u)`, `u::text`), and means "every column".
///   PostgreSQL records such a reference only as a dependency on the whole
///   relation, which a view that merely counts rows also has; the text of the
///   rule's tree tells the two apart.
/// * `i`: table `oid` inherits from, or is a partition of, `ref_oid`.
/// * `f`: function `oid`, named `relname` in schema `nspname`, returns rows
///   of relation `ref_oid` (`RETURNS users` or `RETURNS SETOF users`).
///   PostgreSQL reports no origin for the columns of a function's result, so
///   output-side masking cannot see masked columns coming out of one.
///
/// The query runs on the client's own session, whose `search_path` and
/// temporary schema the client controls, so every relation, type, function
/// and operator is qualified with `pg_catalog`.
pub const CATALOG_SQL: &str = "\
SELECT 'c'::pg_catalog.text AS kind, \
c.oid::pg_catalog.text AS oid, \
n.nspname::pg_catalog.text AS nspname, \
c.relname::pg_catalog.text AS relname, \
c.relkind::pg_catalog.text AS relkind, \
a.attnum::pg_catalog.text AS attnum, \
a.attname::pg_catalog.text AS attname, \
NULL::pg_catalog.text AS ref_oid, \
NULL::pg_catalog.text AS ref_attnum \
FROM pg_catalog.pg_class c \
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
WHERE a.attnum OPERATOR(pg_catalog.>) 0 \
AND NOT a.attisdropped \
AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::pg_catalog.\"char\"[]) \
AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[]) \
AND pg_catalog.left(n.nspname::pg_catalog.text, 8) OPERATOR(pg_catalog.<>) 'pg_toast' \
UNION ALL \
SELECT 'd', r.ev_class::pg_catalog.text, NULL, NULL, NULL, NULL, NULL, \
d.refobjid::pg_catalog.text, d.refobjsubid::pg_catalog.text \
FROM pg_catalog.pg_rewrite r \
JOIN pg_catalog.pg_class v ON v.oid OPERATOR(pg_catalog.=) r.ev_class \
JOIN pg_catalog.pg_namespace vn ON vn.oid OPERATOR(pg_catalog.=) v.relnamespace \
JOIN pg_catalog.pg_depend d ON d.objid OPERATOR(pg_catalog.=) r.oid \
WHERE v.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.\"char\"[]) \
AND vn.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[]) \
AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
AND d.deptype OPERATOR(pg_catalog.=) 'n' \
AND d.refobjid OPERATOR(pg_catalog.<>) r.ev_class \
AND (d.refobjsubid OPERATOR(pg_catalog.>) 0 \
OR pg_catalog.strpos(r.ev_action::pg_catalog.text, ':varattno 0 ') OPERATOR(pg_catalog.>) 0) \
UNION ALL \
SELECT 'i', i.inhrelid::pg_catalog.text, NULL, NULL, NULL, NULL, NULL, \
i.inhparent::pg_catalog.text, NULL \
FROM pg_catalog.pg_inherits i \
UNION ALL \
SELECT 'f', p.oid::pg_catalog.text, pn.nspname::pg_catalog.text, p.proname::pg_catalog.text, \
NULL, NULL, NULL, t.typrelid::pg_catalog.text, NULL \
FROM pg_catalog.pg_proc p \
JOIN pg_catalog.pg_namespace pn ON pn.oid OPERATOR(pg_catalog.=) p.pronamespace \
JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) p.prorettype \
WHERE t.typrelid OPERATOR(pg_catalog.<>) '0'::pg_catalog.oid \
AND pn.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[])";

/// Position of each column in a [`CATALOG_SQL`] row.
const KIND: usize = 0;
const OID: usize = 1;
const NSPNAME: usize = 2;
const RELNAME: usize = 3;
const ATTNUM: usize = 5;
const ATTNAME: usize = 6;
const REF_OID: usize = 7;
const REF_ATTNUM: usize = 8;
/// Columns in a [`CATALOG_SQL`] row.
pub const CATALOG_COLUMNS: usize = 9;

/// PostgreSQL's `FirstNormalObjectId`: objects with a lower OID were created
/// by initdb (system catalogs, their views, `information_schema`). Column
/// patterns are about user data, so those count as known and clean.
pub const FIRST_NORMAL_OID: u32 = 16384;

/// The configured column patterns, as far as this module needs them.
///
/// Names are passed as PostgreSQL stores them: unquoted identifiers folded to
/// lower case, quoted ones exact. Implementations decide case sensitivity.
pub trait ColumnMatcher {
    /// Does a pattern name this column? `schema` is `None` when the SQL did
    /// not qualify the table and the catalog could not place it: answer as if
    /// the table could be in any schema.
    fn matches(&self, schema: Option<&str>, table: &str, column: &str) -> bool;

    /// Could a pattern name a column called `column`, in some table?
    fn may_match(&self, column: &str) -> bool;

    /// Could a pattern name some column of this table? Asked about relations
    /// the catalog does not know, to decide whether `*` or a whole-row
    /// reference over them could carry masked values. The default, `true`,
    /// is the safe answer.
    fn may_match_table(&self, schema: Option<&str>, table: &str) -> bool {
        let _ = (schema, table);
        true
    }

    /// No pattern at all, so nothing is masked. Defaults to `false`.
    fn is_empty(&self) -> bool {
        false
    }
}

/// What the catalog knows about a relation named in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationInfo {
    /// Not in the catalog, or no catalog: decide by the patterns alone.
    Unknown,
    /// Known, and none of its columns is masked.
    Clean,
    /// Known, and these columns (sorted) are masked.
    HasSensitive { columns: Vec<String> },
    /// A view or materialized view that reads a masked column, directly or
    /// through other views; `source` names one such column (`users.password`).
    TaintedView { source: String },
}

/// The masked columns of one database: a snapshot of [`CATALOG_SQL`]
/// judged by a [`ColumnMatcher`]. Rebuild it when the schema or the
/// patterns change.
#[derive(Debug, Clone, Default)]
pub struct MaskCatalog {
    /// False for [`MaskCatalog::empty`]: nothing is known.
    loaded: bool,
    relations: HashMap<u32, Relation>,
    /// Relation name to the OIDs of the relations so named, in any schema.
    by_name: HashMap<String, Vec<u32>>,
    /// Function name to the schema of each function so named and the
    /// relation whose rows it returns.
    functions: HashMap<String, Vec<(String, u32)>>,
}

#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    name: String,
    columns: BTreeMap<i16, String>,
    /// Attnums of the masked columns.
    sensitive: BTreeSet<i16>,
    /// For a tainted view: the masked column it exposes, as `table.column`.
    taint: Option<String>,
}

impl Relation {
    fn sensitive_names(&self) -> impl Iterator<Item = &String> {
        self.sensitive.iter().filter_map(|a| self.columns.get(a))
    }

    fn first_sensitive(&self) -> Option<String> {
        self.sensitive_names()
            .next()
            .map(|c| format!("{}.{c}", self.name))
    }
}

/// What a relation says about one of its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Col {
    /// The relation has no such column.
    Absent,
    /// The relation is not known, or computed: the column may exist, and
    /// the patterns do not mask it.
    Unknown,
    /// The column exists and is not masked.
    Clean,
    /// The column is (or may be) masked.
    Sensitive,
}

impl MaskCatalog {
    /// No catalog: the lookup failed or has not run yet. Relations are all
    /// [`RelationInfo::Unknown`], so decisions rest on names alone.
    pub fn empty() -> MaskCatalog {
        MaskCatalog::default()
    }

    /// Builds the catalog from the rows of [`CATALOG_SQL`], each a vector of
    /// [`CATALOG_COLUMNS`] text values (`None` for NULL), in the query's
    /// column order. A column is masked when `matcher` names it; a masked
    /// column of a parent or partition masks the same-named column of the
    /// tables it is inherited by or from; a view is tainted when it reads a
    /// masked column or a tainted view. Any malformed row is an error, so that
    /// the caller falls back to [`MaskCatalog::empty`] rather than trusting
    /// half a catalog.
    pub fn from_rows(
        rows: &[Vec<Option<String>>],
        matcher: &dyn ColumnMatcher,
    ) -> Result<MaskCatalog, String> {
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut reads: Vec<(u32, u32, i16)> = Vec::new();
        let mut inherits: Vec<(u32, u32)> = Vec::new();
        let mut functions: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if row.len() != CATALOG_COLUMNS {
                return Err(format!(
                    "catalog row {i} has {} columns, expected {CATALOG_COLUMNS}",
                    row.len()
                ));
            }
            let field = |c: usize| -> Result<&str, String> {
                row.get(c)
                    .and_then(|v| v.as_deref())
                    .ok_or_else(|| format!("catalog row {i}: column {c} is NULL"))
            };
            let oid = |c: usize| -> Result<u32, String> {
                let text = field(c)?;
                text.parse::<u32>()
                    .map_err(|_| format!("catalog row {i}: bad OID {text:?}"))
            };
            let attnum = |c: usize| -> Result<i16, String> {
                let text = field(c)?;
                text.parse::<i16>()
                    .map_err(|_| format!("catalog row {i}: bad attnum {text:?}"))
            };
            match field(KIND)? {
                "c" => {
                    let (schema, name, column) =
                        (field(NSPNAME)?, field(RELNAME)?, field(ATTNAME)?);
                    let num = attnum(ATTNUM)?;
                    let relation = relations.entry(oid(OID)?).or_insert_with(|| Relation {
                        schema: schema.to_string(),
                        name: name.to_string(),
                        columns: BTreeMap::new(),
                        sensitive: BTreeSet::new(),
                        taint: None,
                    });
                    relation.columns.insert(num, column.to_string());
                    if matcher.matches(Some(schema), name, column) {
                        relation.sensitive.insert(num);
                    }
                }
                "d" => reads.push((oid(OID)?, oid(REF_OID)?, attnum(REF_ATTNUM)?)),
                "i" => inherits.push((oid(OID)?, oid(REF_OID)?)),
                "f" => {
                    let (schema, name) = (field(NSPNAME)?, field(RELNAME)?);
                    functions
                        .entry(name.to_string())
                        .or_default()
                        .push((schema.to_string(), oid(REF_OID)?));
                }
                other => return Err(format!("catalog row {i}: unknown kind {other:?}")),
            }
        }
        propagate_inheritance(&mut relations, &inherits);
        taint_views(&mut relations, &reads);
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (oid, relation) in &relations {
            by_name.entry(relation.name.clone()).or_default().push(*oid);
        }
        Ok(MaskCatalog {
            loaded: true,
            relations,
            by_name,
            functions,
        })
    }

    /// Was the catalog built from rows (rather than [`MaskCatalog::empty`])?
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Does any relation have a masked column (or is any view tainted)?
    pub fn has_sensitive(&self) -> bool {
        self.relations
            .values()
            .any(|r| r.taint.is_some() || !r.sensitive.is_empty())
    }

    /// Is output column `(table_oid, attnum)` of a RowDescription masked?
    /// True for the masked columns of a relation, and for every column of a
    /// tainted view. False for unknown OIDs: ask [`MaskCatalog::knows`] first.
    pub fn sensitive_attr(&self, table_oid: u32, attnum: i16) -> bool {
        self.relations
            .get(&table_oid)
            .is_some_and(|r| r.taint.is_some() || r.sensitive.contains(&attnum))
    }

    /// Is this table OID known, so that [`MaskCatalog::sensitive_attr`] can
    /// be trusted? OIDs of objects initdb created (below
    /// [`FIRST_NORMAL_OID`]) are always known; 0 (not a table column) never
    /// is. An unknown non-zero OID means the catalog is stale or missing:
    /// mask the column and refresh.
    pub fn knows(&self, table_oid: u32) -> bool {
        table_oid != 0 && (table_oid < FIRST_NORMAL_OID || self.relations.contains_key(&table_oid))
    }

    /// A relation by its name as written in SQL (unquoted parts already
    /// folded to lower case). Without a schema, relations of that name in
    /// every schema count (the session's `search_path` is unknown), and the
    /// worst of them wins. `pg_catalog` and `information_schema` relations
    /// are clean.
    pub fn relation(&self, schema: Option<&str>, name: &str) -> RelationInfo {
        if matches!(schema, Some("pg_catalog" | "information_schema")) {
            return RelationInfo::Clean;
        }
        let mut found = false;
        let mut columns = BTreeSet::new();
        for relation in self.named(schema, name) {
            found = true;
            if let Some(source) = &relation.taint {
                return RelationInfo::TaintedView {
                    source: source.clone(),
                };
            }
            columns.extend(relation.sensitive_names().cloned());
        }
        if !found {
            RelationInfo::Unknown
        } else if columns.is_empty() {
            RelationInfo::Clean
        } else {
            RelationInfo::HasSensitive {
                columns: columns.into_iter().collect(),
            }
        }
    }

    /// The relations a name may refer to.
    fn named<'s>(
        &'s self,
        schema: Option<&'s str>,
        name: &str,
    ) -> impl Iterator<Item = &'s Relation> + 's {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|oid| self.relations.get(oid))
            .filter(move |r| schema.is_none_or(|s| s == r.schema))
    }

    /// The relations whose rows functions of this name return.
    fn function_rows<'s>(
        &'s self,
        schema: Option<&'s str>,
        name: &str,
    ) -> impl Iterator<Item = &'s Relation> + 's {
        self.functions
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(s, _)| schema.is_none_or(|x| x == s))
            .filter_map(|(_, oid)| self.relations.get(oid))
    }

    /// Does a function of this name return rows with masked columns?
    fn function_carries(&self, schema: Option<&str>, name: &str) -> bool {
        self.function_rows(schema, name)
            .any(|r| r.taint.is_some() || !r.sensitive.is_empty())
    }

    /// What the catalog says about `column` of the rows functions of this
    /// name return, or `None` when it knows no such function.
    fn function_column(&self, schema: Option<&str>, name: &str, column: &str) -> Option<Col> {
        self.function_rows(schema, name)
            .map(|r| relation_column(r, column))
            .max()
    }

    /// What the catalog says about `name.column`, or `None` when it does not
    /// know the relation.
    fn column(&self, schema: Option<&str>, name: &str, column: &str) -> Option<Col> {
        if matches!(schema, Some("pg_catalog" | "information_schema")) {
            return Some(Col::Unknown);
        }
        self.named(schema, name)
            .map(|r| relation_column(r, column))
            .max()
    }
}

/// What a known relation says about one of its columns.
fn relation_column(relation: &Relation, column: &str) -> Col {
    if relation.taint.is_some() {
        return Col::Sensitive;
    }
    match relation.columns.iter().find(|(_, c)| *c == column) {
        Some((num, _)) if relation.sensitive.contains(num) => Col::Sensitive,
        Some(_) => Col::Clean,
        None => Col::Absent,
    }
}

/// A masked column of a parent or partition masks the column of the same
/// name in the tables it is inherited by or from: rows of a partition are
/// rows of its parent, and the other way round.
fn propagate_inheritance(relations: &mut HashMap<u32, Relation>, edges: &[(u32, u32)]) {
    // Every pass either masks another column or ends the loop.
    loop {
        let mut changed = false;
        for &(child, parent) in edges {
            for (from, to) in [(parent, child), (child, parent)] {
                let names: Vec<String> = match relations.get(&from) {
                    Some(r) => r.sensitive_names().cloned().collect(),
                    None => continue,
                };
                let Some(target) = relations.get_mut(&to) else {
                    continue;
                };
                let add: Vec<i16> = target
                    .columns
                    .iter()
                    .filter(|(num, name)| names.contains(name) && !target.sensitive.contains(num))
                    .map(|(num, _)| *num)
                    .collect();
                if !add.is_empty() {
                    target.sensitive.extend(add);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// Marks the views that read a masked column or a tainted view, until no
/// more are found.
fn taint_views(relations: &mut HashMap<u32, Relation>, reads: &[(u32, u32, i16)]) {
    // Every pass either taints another view or ends the loop.
    loop {
        let mut changed = false;
        for &(view, target, attnum) in reads {
            if relations.get(&view).is_none_or(|v| v.taint.is_some()) {
                continue;
            }
            let Some(t) = relations.get(&target) else {
                continue;
            };
            let source = if let Some(source) = &t.taint {
                Some(source.clone())
            } else if attnum == 0 {
                t.first_sensitive()
            } else if t.sensitive.contains(&attnum) {
                t.columns.get(&attnum).map(|c| format!("{}.{c}", t.name))
            } else {
                None
            };
            if let (Some(source), Some(v)) = (source, relations.get_mut(&view)) {
                v.taint = Some(source);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// Checks every statement of a piece of SQL text (a simple Query or a Parse
/// message), as split and parsed by [`super::sql::analyze_parsed`]. A
/// statement that does not parse is denied while masking is configured,
/// since nothing can be said about it; a utility statement read from its
/// tokens (no tree, no error) returns no table rows and passes.
pub fn check_sql(
    sql: &str,
    catalog: &MaskCatalog,
    matcher: &dyn ColumnMatcher,
) -> Result<(), String> {
    if matcher.is_empty() {
        return Ok(());
    }
    let (analysis, parsed) = analyze_parsed(sql);
    for (i, statement) in parsed.iter().enumerate() {
        match statement {
            Some(statement) => check(statement, catalog, matcher)?,
            None => check_without_tree(analysis.statements.get(i))?,
        }
    }
    Ok(())
}

/// Verdict for a statement the analyzer has no tree of: a utility
/// statement read from its tokens (VACUUM, FETCH, ...: names and constants
/// only, no table rows come back) passes; one that did not parse cannot be
/// vouched for.
pub fn check_without_tree(info: Option<&super::sql::StatementInfo>) -> Result<(), String> {
    match info {
        Some(info) if info.error.is_none() => Ok(()),
        _ => Err(format!(
            "masked columns are configured and this statement cannot be checked: {}",
            info.and_then(|i| i.error.as_deref()).unwrap_or_default()
        )),
    }
}

/// Verdict for one parsed statement. `Ok(())`: output-side masking is enough.
/// `Err(reason)`: deny; the reason is a short sentence for the client, e.g.
/// "users.password is masked: ...".
///
/// Rules, in short (details in the comments of each check):
/// * A masked column may appear only as a plain column reference
///   (qualified, aliased or parenthesized) that is a whole select-list item
///   of the top-level query, a subquery in FROM (not LATERAL) or a
///   non-recursive WITH query reachable from it, or of the RETURNING list of
///   a top-level INSERT/UPDATE/DELETE, or a plain column of a non-unique
///   index. PREPARE, EXPLAIN and DECLARE CURSOR bodies are checked as
///   top-level statements (EXPLAIN without ANALYZE too: its row estimates
///   for a condition on a masked column come from the column's statistics).
///   Everywhere else (expressions, conditions, sorting,
///   grouping, set operations, VALUES, INSERT ... SELECT, UPDATE SET values,
///   CREATE TABLE AS, SELECT INTO, COPY, views, rules, function bodies) it
///   is denied.
/// * `*` and `t.*` over a relation with masked columns: the same places as
///   above, plus the select list of an EXISTS subquery.
/// * Whole-row references (`t`, `t.*` inside an expression, `t.to_json`) to
///   a relation with masked columns are denied everywhere.
/// * A function known to return rows of a relation with masked columns
///   (`RETURNS SETOF users`): its masked columns, `*` over it and calls of it
///   in expressions are denied, because PostgreSQL reports no origin for
///   the columns of a function's result.
/// * DISTINCT, DISTINCT ON, GROUP BY and ORDER BY may not use a masked
///   output column, by name or position.
/// * Column alias lists (`FROM users u(a, b, c)`, `WITH x(a) AS ...`) over
///   masked columns, JOIN USING a masked column and NATURAL JOIN of a
///   relation with masked columns are denied.
/// * Any reference to a tainted view is denied.
/// * COPY ... TO of a relation with masked columns needs a column list
///   without them.
/// * `query_to_xml` and the other functions that run SQL given as text,
///   `dblink*`, `ts_stat`, `ts_rewrite`, and the statistics views
///   (`pg_stats`, ...) are denied.
/// * CREATE FUNCTION bodies in SQL are checked like statements that
///   return nothing; PL/pgSQL bodies may not mention a masked column name, a
///   relation with masked columns or EXECUTE; other languages are denied.
///   CREATE TRIGGER on a relation with masked columns is denied. Renaming a
///   masked column or its table, and attaching a table with masked columns
///   as a partition or child, are denied.
///
/// Returns quickly when no identifier in the statement could be a masked
/// column and every relation it names is known to be clean.
pub fn check(
    statement: &Statement,
    catalog: &MaskCatalog,
    matcher: &dyn ColumnMatcher,
) -> Result<(), String> {
    if matcher.is_empty() || !needs_check(statement, catalog, matcher) {
        return Ok(());
    }
    check_statement(statement, catalog, matcher, true, 0).map_err(|reason| {
        let unknown = unknown_relations(statement, catalog);
        if unknown.is_empty() {
            return reason;
        }
        format!(
            "{} not in the catalog the proxy read for this database (it does not exist, \
             or was created since), so its columns count as masked: {reason}",
            match unknown.as_slice() {
                [one] => format!("relation {one} is"),
                many => format!("relations {} are", many.join(", ")),
            }
        )
    })
}

/// The relations a statement reads that a loaded catalog does not have
/// (system relations and WITH query names aside), for the denial message:
/// a typo or a missing table is then named as the cause, and the session
/// reads the catalog again before it forwards the statement (a table
/// created since the catalog was read, by a client the proxy does not see).
pub fn unknown_relations(statement: &Statement, catalog: &MaskCatalog) -> Vec<String> {
    struct Names {
        relations: BTreeSet<String>,
        ctes: HashSet<String>,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            for cte in q.with.iter().flat_map(|w| &w.cte_tables) {
                self.ctes.insert(ident_text(&cte.alias.name));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            let parts: Vec<String> = name
                .0
                .iter()
                .filter_map(|p| p.as_ident().map(ident_text))
                .collect();
            self.relations.insert(parts.join("."));
            ControlFlow::Continue(())
        }
    }
    if !catalog.is_loaded() {
        return Vec::new();
    }
    let mut names = Names {
        relations: BTreeSet::new(),
        ctes: HashSet::new(),
    };
    let _ = statement.visit(&mut names);
    names
        .relations
        .into_iter()
        .filter(|full| {
            let (schema, name) = match full.rsplit_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, full.as_str()),
            };
            let system = name.starts_with("pg_")
                || matches!(schema, Some("pg_catalog" | "information_schema"));
            let cte = schema.is_none() && names.ctes.contains(name);
            let skip = name.is_empty() || system || cte;
            !skip && matches!(catalog.relation(schema, name), RelationInfo::Unknown)
        })
        .collect()
}

/// Most levels of subqueries, CTE references and views a name is followed
/// through; beyond it the name counts as masked.
const MAX_RESOLVE_DEPTH: usize = 64;

/// Deepest expression the check walks. Statements from
/// [`super::sql::analyze_parsed`] stay well below (it refuses more than
/// [`MAX_OPERATORS`] operators); anything deeper is denied.
const MAX_EXPR_DEPTH: usize = MAX_OPERATORS + 100;

/// Most name lookups (one FROM item, one column) one statement may take:
/// every reference is matched against every FROM item of the statement, so
/// thousands of both would otherwise take seconds. Beyond it the statement
/// is denied as too complex.
const MAX_LOOKUPS: usize = 200_000;

/// How deep function bodies that create functions are followed.
const MAX_BODY_NESTING: usize = 4;

/// Functions that run SQL given as text (or dump a whole table or schema),
/// which the check cannot see into.
const TEXT_SQL_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Views and catalogs that show column statistics: most common values and
/// histogram bounds are samples of the column's values. Not
/// `pg_statistic_ext`: it holds only the definitions of extended statistics
/// (name, columns, kinds), which `psql \d` and `pg_dump` read; their
/// sampled values are in `pg_statistic_ext_data`.
const STATISTICS_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

/// Functions that accept a whole row, and so can be called on one with
/// attribute notation (`u.to_json` is `to_json(u)`). With the catalog, any
/// name that is not a column of the relation counts; without it, these do.
const ROW_FUNCTIONS: &[&str] = &[
    "hstore",
    "row_to_json",
    "to_json",
    "to_jsonb",
    "json_build_array",
    "jsonb_build_array",
    "concat",
    "quote_literal",
    "quote_nullable",
    "json_agg",
    "jsonb_agg",
    "array_agg",
];

fn is_text_sql_function(name: &str) -> bool {
    TEXT_SQL_FUNCTIONS.contains(&name) || name.starts_with("dblink")
}

/// Folded parts of a dotted name.
fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident_text(ident),
            other => other.to_string().to_lowercase(),
        })
        .collect()
}

/// `(schema, relation)` of a dotted relation name: the last part and the
/// one before it.
fn split_relation(parts: &[String]) -> (Option<&str>, &str) {
    match parts {
        [] => (None, ""),
        [name] => (None, name),
        [.., schema, name] => (Some(schema), name),
    }
}

/// The column reference an expression is, under any parentheses.
fn plain_ref(mut expr: &Expr) -> Option<&Expr> {
    loop {
        match expr {
            Expr::Nested(inner) => expr = inner.as_ref(),
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => return Some(expr),
            _ => return None,
        }
    }
}

/// Folded parts of a column reference.
fn ref_parts(expr: &Expr) -> Vec<String> {
    match expr {
        Expr::Identifier(ident) => vec![ident_text(ident)],
        Expr::CompoundIdentifier(idents) => idents.iter().map(ident_text).collect(),
        _ => Vec::new(),
    }
}

/// The name PostgreSQL gives a select-list item without an alias, as far
/// as it matters here.
fn output_name(mut expr: &Expr) -> String {
    loop {
        match expr {
            Expr::Nested(inner) => expr = inner.as_ref(),
            Expr::Cast { expr: inner, .. } => expr = inner.as_ref(),
            Expr::Identifier(ident) => return ident_text(ident),
            Expr::CompoundIdentifier(idents) => {
                return idents.last().map(ident_text).unwrap_or_default()
            }
            Expr::Function(f) => return name_parts(&f.name).pop().unwrap_or_default(),
            _ => return "?column?".into(),
        }
    }
}

/// The text of a string literal.
fn string_value(expr: &Expr) -> Option<&str> {
    let Expr::Value(v) = expr else {
        return None;
    };
    match &v.value {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => Some(s),
        Value::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => Some(c),
        _ => None,
    }
}

fn factor_alias(factor: &TableFactor) -> Option<&TableAlias> {
    match factor {
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::JsonTable { alias, .. }
        | TableFactor::OpenJsonTable { alias, .. }
        | TableFactor::NestedJoin { alias, .. }
        | TableFactor::Pivot { alias, .. }
        | TableFactor::Unpivot { alias, .. }
        | TableFactor::MatchRecognize { alias, .. }
        | TableFactor::XmlTable { alias, .. }
        | TableFactor::SemanticView { alias, .. } => alias.as_ref(),
        TableFactor::UnpivotExpr { .. } => None,
    }
}

fn key<T>(node: &T) -> usize {
    node as *const T as usize
}

/// Cheap first pass: could anything in the statement involve a masked
/// column? Only common statements are judged here; anything else gets the
/// full check.
/// Whether [`check`] has anything to look at: false when no identifier in
/// the statement could name a masked column and every relation it names is
/// known to be clean. Then the verdict cannot depend on the statement's
/// literals either, which lets callers reuse it for the same statement shape.
pub fn needs_check(
    statement: &Statement,
    catalog: &MaskCatalog,
    matcher: &dyn ColumnMatcher,
) -> bool {
    struct Prescan<'c> {
        catalog: &'c MaskCatalog,
        matcher: &'c dyn ColumnMatcher,
    }
    impl Prescan<'_> {
        fn relation_is_clean(&self, parts: &[String]) -> bool {
            let (schema, name) = split_relation(parts);
            if STATISTICS_RELATIONS.contains(&name) {
                return false;
            }
            match self.catalog.relation(schema, name) {
                RelationInfo::Clean => true,
                RelationInfo::Unknown => !self.matcher.may_match_table(schema, name),
                _ => false,
            }
        }
    }
    impl Visitor for Prescan<'_> {
        type Break = ();

        fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
            match statement {
                Statement::Query(_)
                | Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
                | Statement::Prepare { .. }
                | Statement::Execute { .. }
                | Statement::Explain { .. }
                | Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Savepoint { .. }
                | Statement::ReleaseSavepoint { .. }
                | Statement::Set(_)
                | Statement::Deallocate { .. }
                | Statement::Discard { .. } => ControlFlow::Continue(()),
                _ => ControlFlow::Break(()),
            }
        }

        fn pre_visit_ident(&mut self, ident: &Ident) -> ControlFlow<()> {
            let name = ident_text(ident);
            if self.matcher.may_match(&name)
                || is_text_sql_function(&name)
                || self.catalog.function_carries(None, &name)
            {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }

        fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
            if self.relation_is_clean(&name_parts(relation)) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }

        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            // `TABLE t` names a relation without visiting it as one.
            let mut clean = true;
            for_each_table(&query.body, &mut |schema, name| {
                let parts: Vec<String> = schema
                    .iter()
                    .map(|s| ident_text(s))
                    .chain(std::iter::once(ident_text(name)))
                    .collect();
                clean &= self.relation_is_clean(&parts);
            });
            if clean {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }
    }
    statement
        .visit(&mut Prescan { catalog, matcher })
        .is_break()
}

/// Calls `f(schema, table)` for each `TABLE name` directly in a query body
/// (set operation branches included, nested queries not: the visitor
/// reaches those on its own).
fn for_each_table(body: &SetExpr, f: &mut dyn FnMut(Option<&Ident>, &Ident)) {
    match body {
        SetExpr::Table(t) => {
            if let Some(name) = &t.table_name {
                f(t.schema_name.as_ref(), name);
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            for_each_table(left, f);
            for_each_table(right, f);
        }
        _ => {}
    }
}

fn check_statement(
    statement: &Statement,
    catalog: &MaskCatalog,
    matcher: &dyn ColumnMatcher,
    top: bool,
    nesting: usize,
) -> Result<(), String> {
    if nesting > MAX_BODY_NESTING {
        return Err("function bodies are nested too deeply to check for masked columns".into());
    }
    let mut scope = Scope::default();
    let mut collect = Collect {
        scope: &mut scope,
        depth: 0,
    };
    if statement.visit(&mut collect).is_break() {
        return Err(too_deep());
    }
    let mut allowed = Allowed::default();
    if top {
        allowed.statement(statement, 0);
    }
    let resolver = Resolver {
        scope: &scope,
        catalog,
        matcher,
        columns: RefCell::new(HashMap::new()),
        columns_active: RefCell::new(HashSet::new()),
        idents: RefCell::new(HashMap::new()),
        carries: RefCell::new(HashMap::new()),
        carries_active: RefCell::new(HashSet::new()),
        budget: Cell::new(MAX_LOOKUPS),
    };
    let mut check = Check {
        res: &resolver,
        allowed: &allowed,
        exists_items: HashSet::new(),
        depth: 0,
        nesting,
        denial: None,
    };
    let _ = statement.visit(&mut check);
    if resolver.budget.get() == 0 {
        return Err(format!(
            "statement too complex to check for masked columns: more than {MAX_LOOKUPS} name \
             lookups"
        ));
    }
    match check.denial {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

fn too_deep() -> String {
    "statement nests expressions too deeply to check for masked columns".into()
}

/// Where the rows of a FROM item (or a statement's target table) come from.
#[derive(Debug)]
enum Source {
    /// A table, view or WITH query named in SQL (folded name parts).
    Named {
        schema: Option<String>,
        name: String,
    },
    /// A subquery in FROM: index into [`Scope::shapes`].
    Derived(usize),
    /// A parenthesized join with an alias, or something else that passes
    /// the columns of other FROM items through: indices into
    /// [`Scope::bindings`].
    Join(Vec<usize>),
    /// Rows computed by a function (named, folded schema and name, so that
    /// the catalog and the patterns can judge its columns) or given by the
    /// client (`excluded` of an upsert).
    Computed {
        function: Option<(Option<String>, String)>,
    },
}

/// One name a column reference can be qualified with.
#[derive(Debug)]
struct Binding {
    /// The alias, or the relation's own name; `None` for a subquery without
    /// an alias.
    name: Option<String>,
    source: Source,
}

/// The output columns of a subquery or WITH query.
#[derive(Debug, Default)]
struct Shape {
    /// Output name and, for a plain column reference, its folded parts.
    columns: Vec<(String, Option<Vec<String>>)>,
    /// FROM items `*` passes through (indices into [`Scope::bindings`]).
    expanded: Vec<usize>,
    /// Names of FROM items `t.*` passes through.
    expanded_names: Vec<String>,
    /// The column alias list, when there is one.
    renamed: Option<Vec<String>>,
    /// Columns that cannot be followed (`(expr).*`): all count as masked.
    opaque: bool,
}

/// Every FROM item of a statement, and the shapes of its subqueries and
/// WITH queries. Filled by [`Collect`]; nodes are keyed by address, since
/// the visitor only lends them for the duration of a call.
#[derive(Debug, Default)]
struct Scope {
    bindings: Vec<Binding>,
    by_name: HashMap<String, Vec<usize>>,
    /// `TableFactor` address to its binding.
    factors: HashMap<usize, usize>,
    /// `Table` (`TABLE name` query body) address to its binding.
    tables: HashMap<usize, usize>,
    /// INSERT/UPDATE/DELETE statement address to its target bindings.
    targets: HashMap<usize, Vec<usize>>,
    shapes: Vec<Shape>,
    /// WITH query name to its shapes.
    ctes: HashMap<String, Vec<usize>>,
}

impl Scope {
    fn add(&mut self, name: Option<String>, source: Source) -> usize {
        let index = self.bindings.len();
        if let Some(name) = &name {
            self.by_name.entry(name.clone()).or_default().push(index);
        }
        self.bindings.push(Binding { name, source });
        index
    }

    fn add_named(&mut self, alias: Option<String>, parts: Vec<String>) -> usize {
        let (schema, name) = split_relation(&parts);
        let source = Source::Named {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        };
        let binding = alias.unwrap_or_else(|| name.to_string());
        self.add(Some(binding), source)
    }

    /// The bindings of a FROM list, in order.
    fn bindings_of(&self, from: &[TableWithJoins]) -> Vec<usize> {
        let mut out = Vec::new();
        for twj in from {
            self.factor_bindings(&twj.relation, &mut out, 0);
            for join in &twj.joins {
                self.factor_bindings(&join.relation, &mut out, 0);
            }
        }
        out
    }

    fn factor_bindings(&self, factor: &TableFactor, out: &mut Vec<usize>, depth: usize) {
        if let Some(&b) = self.factors.get(&key(factor)) {
            out.push(b);
        } else if let TableFactor::NestedJoin {
            table_with_joins, ..
        } = factor
        {
            if depth < MAX_RESOLVE_DEPTH {
                self.factor_bindings(&table_with_joins.relation, out, depth + 1);
                for join in &table_with_joins.joins {
                    self.factor_bindings(&join.relation, out, depth + 1);
                }
            }
        }
    }

    /// The shape of a subquery or WITH query. Its FROM items must already
    /// be registered (the visitor calls this after visiting the children).
    fn shape_of(&mut self, query: &Query, renamed: &[Ident]) -> usize {
        let mut shape = Shape::default();
        self.fill_shape(&query.body, &mut shape, 0);
        if !renamed.is_empty() {
            shape.renamed = Some(renamed.iter().map(ident_text).collect());
        }
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    fn fill_shape(&self, body: &SetExpr, shape: &mut Shape, depth: usize) {
        if depth > MAX_RESOLVE_DEPTH {
            shape.opaque = true;
            return;
        }
        match body {
            SetExpr::Select(select) => {
                let from = self.bindings_of(&select.from);
                self.fill_items(&select.projection, &from, shape);
            }
            SetExpr::Query(query) => self.fill_shape(&query.body, shape, depth + 1),
            SetExpr::SetOperation { left, right, .. } => {
                self.fill_shape(left, shape, depth + 1);
                self.fill_shape(right, shape, depth + 1);
            }
            SetExpr::Values(_) => {}
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement) => {
                let targets = self
                    .targets
                    .get(&key(statement))
                    .cloned()
                    .unwrap_or_default();
                if let Some(items) = returning(statement) {
                    self.fill_items(items, &targets, shape);
                }
            }
            SetExpr::Merge(_) => {}
            SetExpr::Table(table) => match self.tables.get(&key(table.as_ref())) {
                Some(&b) => shape.expanded.push(b),
                None => shape.opaque = true,
            },
        }
    }

    fn fill_items(&self, items: &[SelectItem], from: &[usize], shape: &mut Shape) {
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) => shape
                    .columns
                    .push((output_name(expr), plain_ref(expr).map(ref_parts))),
                SelectItem::ExprWithAlias { expr, alias } => shape
                    .columns
                    .push((ident_text(alias), plain_ref(expr).map(ref_parts))),
                SelectItem::ExprWithAliases { aliases, .. } => shape
                    .columns
                    .extend(aliases.iter().map(|a| (ident_text(a), None))),
                SelectItem::Wildcard(_) => shape.expanded.extend_from_slice(from),
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    if let Some(last) = name_parts(n).pop() {
                        shape.expanded_names.push(last);
                    }
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(_), _) => {
                    shape.opaque = true
                }
            }
        }
    }
}

/// The RETURNING list of an INSERT, UPDATE or DELETE.
fn returning(statement: &Statement) -> Option<&[SelectItem]> {
    match statement {
        Statement::Insert(i) => i.returning.as_deref(),
        Statement::Update(u) => u.returning.as_deref(),
        Statement::Delete(d) => d.returning.as_deref(),
        _ => None,
    }
}

fn delete_tables(from: &FromTable) -> &[TableWithJoins] {
    match from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    }
}

fn update_from(from: &Option<UpdateTableFromKind>) -> &[TableWithJoins] {
    match from {
        Some(UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t)) => t,
        None => &[],
    }
}

/// First pass: registers every FROM item, statement target and WITH query.
struct Collect<'s> {
    scope: &'s mut Scope,
    depth: usize,
}

impl Collect<'_> {
    /// A target table that column references in the statement may name
    /// (`CREATE INDEX ON users (password)`, `NEW.password` in a rule).
    fn target(&mut self, name: &ObjectName, row_aliases: bool) -> usize {
        let parts = name_parts(name);
        let b = self.scope.add_named(None, parts.clone());
        if row_aliases {
            self.scope.add_named(Some("new".into()), parts.clone());
            self.scope.add_named(Some("old".into()), parts);
        }
        b
    }
}

impl Visitor for Collect<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    let alias = insert.table_alias.as_ref().map(|a| ident_text(&a.alias));
                    let b = self.scope.add_named(alias, name_parts(name));
                    self.scope.targets.insert(key(statement), vec![b]);
                    if insert.on.is_some() {
                        // ON CONFLICT ... DO UPDATE: `excluded` is the row
                        // being inserted, which the client supplied.
                        self.scope
                            .add(Some("excluded".into()), Source::Computed { function: None });
                    }
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => {
                self.target(table_name, false);
            }
            Statement::CreateIndex(index) => {
                self.target(&index.table_name, false);
            }
            Statement::CreatePolicy(policy) => {
                self.target(&policy.table_name, false);
            }
            Statement::CreateTrigger(trigger) => {
                self.target(&trigger.table_name, true);
            }
            Statement::CreateRule(rule) => {
                self.target(&rule.table_name, true);
            }
            Statement::AlterTable(alter) => {
                self.target(&alter.name, false);
            }
            Statement::CreateTable(table) => {
                self.target(&table.name, false);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let targets = match statement {
            Statement::Update(update) => {
                self.scope.bindings_of(std::slice::from_ref(&update.table))
            }
            Statement::Delete(delete) => self.scope.bindings_of(delete_tables(&delete.from)),
            _ => return ControlFlow::Continue(()),
        };
        self.scope.targets.insert(key(statement), targets);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        register_tables(self.scope, &query.body);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let renamed: Vec<Ident> =
                    cte.alias.columns.iter().map(|c| c.name.clone()).collect();
                let shape = self.scope.shape_of(&cte.query, &renamed);
                self.scope
                    .ctes
                    .entry(ident_text(&cte.alias.name))
                    .or_default()
                    .push(shape);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let alias = factor_alias(factor).map(|a| ident_text(&a.name));
        let b = match factor {
            TableFactor::Table {
                name, args: None, ..
            } => self.scope.add_named(alias, name_parts(name)),
            TableFactor::Table { name, .. } | TableFactor::Function { name, .. } => {
                let parts = name_parts(name);
                let (schema, function) = split_relation(&parts);
                let binding = alias.unwrap_or_else(|| function.to_string());
                let function = Some((schema.map(str::to_string), function.to_string()));
                self.scope.add(Some(binding), Source::Computed { function })
            }
            TableFactor::Derived {
                subquery,
                alias: table_alias,
                ..
            } => {
                let renamed: Vec<Ident> = table_alias
                    .iter()
                    .flat_map(|a| a.columns.iter().map(|c| c.name.clone()))
                    .collect();
                let shape = self.scope.shape_of(subquery, &renamed);
                self.scope.add(alias, Source::Derived(shape))
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                if alias.is_none() {
                    // Its tables are FROM items of their own.
                    return ControlFlow::Continue(());
                }
                let inner = self
                    .scope
                    .bindings_of(std::slice::from_ref(table_with_joins.as_ref()));
                self.scope.add(alias, Source::Join(inner))
            }
            TableFactor::Pivot { table, .. }
            | TableFactor::Unpivot { table, .. }
            | TableFactor::MatchRecognize { table, .. } => {
                let mut inner = Vec::new();
                self.scope.factor_bindings(table, &mut inner, 0);
                self.scope.add(alias, Source::Join(inner))
            }
            _ => self.scope.add(alias, Source::Computed { function: None }),
        };
        self.scope.factors.insert(key(factor), b);
        ControlFlow::Continue(())
    }
}

fn register_tables(scope: &mut Scope, body: &SetExpr) {
    match body {
        SetExpr::Table(table) => {
            if let Some(name) = &table.table_name {
                let parts = table
                    .schema_name
                    .iter()
                    .chain(std::iter::once(name))
                    .map(ident_text)
                    .collect();
                let b = scope.add_named(None, parts);
                scope.tables.insert(key(table.as_ref()), b);
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            register_tables(scope, left);
            register_tables(scope, right);
        }
        _ => {}
    }
}

/// The places where PostgreSQL tracks the origin of a plain column
/// reference, so that output-side masking sees it: node addresses.
#[derive(Debug, Default)]
struct Allowed {
    /// Plain column references that are whole select-list items.
    exprs: HashSet<usize>,
    /// `*` and `t.*` select-list items.
    items: HashSet<usize>,
    /// `TABLE name` query bodies.
    tables: HashSet<usize>,
}

impl Allowed {
    fn statement(&mut self, statement: &Statement, depth: usize) {
        if depth > MAX_RESOLVE_DEPTH {
            return;
        }
        match statement {
            Statement::Query(query) => self.query(query, true, depth + 1),
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                if let Some(items) = returning(statement) {
                    self.items(items);
                }
            }
            Statement::Explain { statement, .. } | Statement::Prepare { statement, .. } => {
                self.statement(statement, depth + 1)
            }
            Statement::Declare { stmts, .. } => {
                for declare in stmts {
                    if let Some(query) = &declare.for_query {
                        self.query(query, true, depth + 1);
                    }
                }
            }
            // A plain index on a masked column returns nothing; a unique one
            // would answer "does anyone have this value?" on every insert.
            Statement::CreateIndex(index) if !index.unique => {
                for column in &index.columns {
                    if column.operator_class.is_some() {
                        // An operator class runs its own functions over the values.
                        continue;
                    }
                    if let Some(r) = plain_ref(&column.column.expr) {
                        self.exprs.insert(key(r));
                    }
                }
            }
            _ => {}
        }
    }

    fn query(&mut self, query: &Query, top: bool, depth: usize) {
        if depth > MAX_RESOLVE_DEPTH {
            return;
        }
        if let Some(with) = &query.with {
            // PostgreSQL does not track origins through a recursive WITH.
            if !with.recursive {
                for cte in &with.cte_tables {
                    self.query(&cte.query, false, depth + 1);
                }
            }
        }
        self.body(&query.body, top, depth + 1);
    }

    fn body(&mut self, body: &SetExpr, top: bool, depth: usize) {
        if depth > MAX_RESOLVE_DEPTH {
            return;
        }
        match body {
            SetExpr::Select(select) if select.into.is_none() => {
                self.items(&select.projection);
                for twj in &select.from {
                    self.factor(&twj.relation, depth + 1);
                    for join in &twj.joins {
                        self.factor(&join.relation, depth + 1);
                    }
                }
            }
            SetExpr::Query(query) => self.query(query, top, depth + 1),
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement)
                if top =>
            {
                if let Some(items) = returning(statement) {
                    self.items(items);
                }
            }
            SetExpr::Table(table) => {
                self.tables.insert(key(table.as_ref()));
            }
            _ => {}
        }
    }

    fn factor(&mut self, factor: &TableFactor, depth: usize) {
        if depth > MAX_RESOLVE_DEPTH {
            return;
        }
        match factor {
            TableFactor::Derived {
                lateral: false,
                subquery,
                ..
            } => self.query(subquery, false, depth + 1),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.factor(&table_with_joins.relation, depth + 1);
                for join in &table_with_joins.joins {
                    self.factor(&join.relation, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn items(&mut self, items: &[SelectItem]) {
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                    if let Some(r) = plain_ref(expr) {
                        self.exprs.insert(key(r));
                    }
                }
                SelectItem::Wildcard(_)
                | SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(_),
                    _,
                ) => {
                    self.items.insert(key(item));
                }
                _ => {}
            }
        }
    }
}

/// What a column reference turns out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefState {
    Clean,
    Sensitive,
    /// A whole-row reference to this FROM item, which carries masked columns.
    WholeRow(String),
}

/// Answers questions about names against a [`Scope`], the catalog and the
/// patterns, remembering the answers.
struct Resolver<'s> {
    scope: &'s Scope,
    catalog: &'s MaskCatalog,
    matcher: &'s dyn ColumnMatcher,
    /// Column name to what each binding says about it.
    columns: RefCell<HashMap<String, HashMap<usize, Col>>>,
    columns_active: RefCell<HashSet<(usize, String)>>,
    /// Unqualified names already resolved.
    idents: RefCell<HashMap<String, RefState>>,
    carries: RefCell<HashMap<usize, bool>>,
    carries_active: RefCell<HashSet<usize>>,
    /// Lookups left before the statement counts as too complex to check.
    budget: Cell<usize>,
}

impl Resolver<'_> {
    /// Takes one lookup from the budget; false when it is spent.
    fn spend(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        self.budget.set(left - 1);
        true
    }

    /// The WITH queries a relation name may refer to. With a loaded catalog
    /// that does not know the name, the name is taken to be only the WITH
    /// query; otherwise it may be either (the exact scope is not tracked).
    fn ctes(&self, schema: Option<&str>, name: &str) -> (&[usize], bool) {
        let ctes = match schema {
            None => self.scope.ctes.get(name).map(Vec::as_slice).unwrap_or(&[]),
            Some(_) => &[],
        };
        let also_relation = ctes.is_empty()
            || !self.catalog.is_loaded()
            || self.catalog.relation(schema, name) != RelationInfo::Unknown;
        (ctes, also_relation)
    }

    /// What binding `b` says about a column.
    fn column_in(&self, b: usize, column: &str, depth: usize) -> Col {
        if depth > MAX_RESOLVE_DEPTH || !self.spend() {
            return Col::Sensitive;
        }
        let cached = self
            .columns
            .borrow()
            .get(column)
            .and_then(|m| m.get(&b))
            .copied();
        if let Some(state) = cached {
            return state;
        }
        let memo_key = (b, column.to_string());
        // A WITH query that reaches itself again: what flows around the
        // cycle entered it somewhere else, and is judged there.
        if !self.columns_active.borrow_mut().insert(memo_key.clone()) {
            return Col::Absent;
        }
        let state = match self.scope.bindings.get(b) {
            None => Col::Sensitive,
            Some(binding) => self.source_column(&binding.source, column, depth + 1),
        };
        self.columns_active.borrow_mut().remove(&memo_key);
        self.columns
            .borrow_mut()
            .entry(memo_key.1)
            .or_default()
            .insert(b, state);
        state
    }

    fn source_column(&self, source: &Source, column: &str, depth: usize) -> Col {
        match source {
            Source::Named { schema, name } => {
                let schema = schema.as_deref();
                let (ctes, also_relation) = self.ctes(schema, name);
                let mut state = Col::Absent;
                for &shape in ctes {
                    state = state.max(self.shape_column(shape, column, depth + 1));
                }
                if also_relation {
                    let relation = self
                        .catalog
                        .column(schema, name, column)
                        .unwrap_or_else(|| {
                            if self.matcher.matches(schema, name, column) {
                                Col::Sensitive
                            } else {
                                Col::Unknown
                            }
                        });
                    state = state.max(relation);
                }
                state
            }
            Source::Derived(shape) => self.shape_column(*shape, column, depth + 1),
            Source::Join(inner) => inner
                .iter()
                .map(|b| self.column_in(*b, column, depth + 1))
                .max()
                .unwrap_or(Col::Absent),
            Source::Computed {
                function: Some((schema, f)),
            } => self.function_column(schema.as_deref(), f, column),
            Source::Computed { function: None } => Col::Unknown,
        }
    }

    fn shape_column(&self, shape: usize, column: &str, depth: usize) -> Col {
        let Some(s) = self.scope.shapes.get(shape) else {
            return Col::Sensitive;
        };
        if s.opaque {
            return Col::Sensitive;
        }
        if s.renamed.is_some() && self.shape_carries(shape, depth + 1) {
            return Col::Sensitive;
        }
        let mut state = Col::Absent;
        if s.renamed.iter().flatten().any(|n| n == column) {
            state = Col::Clean;
        }
        for (name, reference) in &s.columns {
            if name != column {
                continue;
            }
            let here = match reference {
                Some(parts) => match self.ref_state(parts, depth + 1) {
                    RefState::Clean => Col::Clean,
                    _ => Col::Sensitive,
                },
                None => Col::Clean,
            };
            state = state.max(here);
        }
        for &b in &s.expanded {
            state = state.max(self.column_in(b, column, depth + 1));
        }
        for name in &s.expanded_names {
            for &b in self.scope.by_name.get(name).into_iter().flatten() {
                state = state.max(self.column_in(b, column, depth + 1));
            }
        }
        state
    }

    /// Could rows of binding `b` carry a masked value (so that `*` or a
    /// whole-row reference over it would expose one)?
    fn carries(&self, b: usize, depth: usize) -> bool {
        if depth > MAX_RESOLVE_DEPTH || !self.spend() {
            return true;
        }
        let cached = self.carries.borrow().get(&b).copied();
        if let Some(carries) = cached {
            return carries;
        }
        if !self.carries_active.borrow_mut().insert(b) {
            return false;
        }
        let carries = match self.scope.bindings.get(b) {
            None => true,
            Some(binding) => self.source_carries(&binding.source, depth + 1),
        };
        self.carries_active.borrow_mut().remove(&b);
        self.carries.borrow_mut().insert(b, carries);
        carries
    }

    fn source_carries(&self, source: &Source, depth: usize) -> bool {
        match source {
            Source::Named { schema, name } => {
                let schema = schema.as_deref();
                let (ctes, also_relation) = self.ctes(schema, name);
                ctes.iter().any(|&s| self.shape_carries(s, depth + 1))
                    || (also_relation && self.relation_carries(schema, name))
            }
            Source::Derived(shape) => self.shape_carries(*shape, depth + 1),
            Source::Join(inner) => inner.iter().any(|&b| self.carries(b, depth + 1)),
            Source::Computed { function } => function
                .as_ref()
                .is_some_and(|(schema, f)| self.catalog.function_carries(schema.as_deref(), f)),
        }
    }

    /// Is `column` of the named relation masked?
    fn table_column_masked(&self, schema: Option<&str>, name: &str, column: &str) -> bool {
        match self.catalog.column(schema, name, column) {
            Some(state) => state == Col::Sensitive,
            None => self.matcher.matches(schema, name, column),
        }
    }

    fn relation_carries(&self, schema: Option<&str>, name: &str) -> bool {
        match self.catalog.relation(schema, name) {
            RelationInfo::Clean => false,
            RelationInfo::HasSensitive { .. } | RelationInfo::TaintedView { .. } => true,
            RelationInfo::Unknown => self.matcher.may_match_table(schema, name),
        }
    }

    fn shape_carries(&self, shape: usize, depth: usize) -> bool {
        let Some(s) = self.scope.shapes.get(shape) else {
            return true;
        };
        s.opaque
            || s.columns.iter().any(|(_, reference)| {
                reference
                    .as_ref()
                    .is_some_and(|parts| self.ref_state(parts, depth + 1) != RefState::Clean)
            })
            || s.expanded.iter().any(|&b| self.carries(b, depth + 1))
            || s.expanded_names.iter().any(|name| {
                self.scope
                    .by_name
                    .get(name)
                    .into_iter()
                    .flatten()
                    .any(|&b| self.carries(b, depth + 1))
            })
    }

    /// Could the FROM items (or, failing that, relations) called `name`
    /// carry masked values? For `t.*` and `t` in expressions.
    fn name_carries(&self, parts: &[String]) -> bool {
        let (schema, name) = split_relation(parts);
        match self.scope.by_name.get(name) {
            Some(bs) if !bs.is_empty() => bs.iter().any(|&b| self.carries(b, 0)),
            _ => self.relation_carries(schema, name),
        }
    }

    /// Resolves a column reference (folded parts) against every FROM item
    /// of the statement.
    fn ref_state(&self, parts: &[String], depth: usize) -> RefState {
        if depth > MAX_RESOLVE_DEPTH {
            return RefState::Sensitive;
        }
        match parts {
            [] => RefState::Clean,
            [column] => self.ident_state(column, depth),
            [.., table, column] => {
                let bindings = self
                    .scope
                    .by_name
                    .get(table)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                if bindings.is_empty() {
                    // Not a FROM item: a field of a composite column, or a
                    // name we cannot place.
                    if parts.iter().any(|p| self.matcher.may_match(p)) {
                        return RefState::Sensitive;
                    }
                    if let Some(bs) = self.scope.by_name.get(column) {
                        if bs.iter().any(|&b| self.carries(b, depth + 1)) {
                            return RefState::WholeRow(column.clone());
                        }
                    }
                    return match parts.first() {
                        Some(first) => self.ident_state(first, depth + 1),
                        None => RefState::Clean,
                    };
                }
                let mut state = RefState::Clean;
                for &b in bindings {
                    match self.column_in(b, column, depth + 1) {
                        Col::Sensitive => return RefState::Sensitive,
                        // Not a column, so attribute notation for a function
                        // of the whole row: `u.to_json`, `u.concat`.
                        Col::Absent if self.carries(b, depth + 1) => {
                            state = RefState::WholeRow(table.clone())
                        }
                        Col::Unknown
                            if ROW_FUNCTIONS.contains(&column.as_str())
                                && self.carries(b, depth + 1) =>
                        {
                            state = RefState::WholeRow(table.clone())
                        }
                        _ => {}
                    }
                }
                state
            }
        }
    }

    /// An unqualified name: a column of some FROM item, or, when no FROM
    /// item is known to have such a column, possibly a whole-row reference
    /// to a FROM item of that name (PostgreSQL prefers the column).
    fn ident_state(&self, name: &str, depth: usize) -> RefState {
        let cached = self.idents.borrow().get(name).cloned();
        if let Some(state) = cached {
            return state;
        }
        let state = self.resolve_ident(name, depth);
        self.idents
            .borrow_mut()
            .insert(name.to_string(), state.clone());
        state
    }

    fn resolve_ident(&self, name: &str, depth: usize) -> RefState {
        let mut known = false;
        let mut maybe = false;
        for b in 0..self.scope.bindings.len() {
            match self.column_in(b, name, depth + 1) {
                Col::Sensitive => return RefState::Sensitive,
                Col::Clean => known = true,
                Col::Unknown => maybe = true,
                Col::Absent => {}
            }
        }
        if !known {
            if let Some(bs) = self.scope.by_name.get(name) {
                if bs.iter().any(|&b| self.carries(b, depth + 1)) {
                    return RefState::WholeRow(name.to_string());
                }
            }
        }
        if !known && !maybe && self.matcher.may_match(name) {
            // Not a column of anything we know: a parameter, an outer
            // reference, a typo. It could be the masked column.
            return RefState::Sensitive;
        }
        RefState::Clean
    }

    /// Is a masked column reference (possibly) a column of a function's
    /// result, whose origin PostgreSQL does not report?
    fn is_function_column(&self, parts: &[String]) -> bool {
        let Some(column) = parts.last() else {
            return false;
        };
        let candidates: Vec<usize> = match parts {
            [_] => (0..self.scope.bindings.len()).collect(),
            [.., table, _] => self.scope.by_name.get(table).cloned().unwrap_or_default(),
            [] => Vec::new(),
        };
        candidates.iter().any(|&b| {
            matches!(
                self.scope.bindings.get(b).map(|x| &x.source),
                Some(Source::Computed { function: Some((schema, f)) })
                    if self.function_column(schema.as_deref(), f, column) == Col::Sensitive
            )
        })
    }

    /// What a function's result says about a column: the relation it
    /// returns rows of, when the catalog knows it, and the patterns (taking
    /// the function's name for a table's).
    fn function_column(&self, schema: Option<&str>, function: &str, column: &str) -> Col {
        let by_name = self.matcher.matches(None, function, column);
        match self.catalog.function_column(schema, function, column) {
            Some(_) if by_name => Col::Sensitive,
            Some(known) => known,
            None if by_name => Col::Sensitive,
            None => Col::Unknown,
        }
    }

    /// Is binding `b` a function result with masked columns?
    fn is_carrying_function(&self, b: usize) -> bool {
        matches!(
            self.scope.bindings.get(b).map(|x| &x.source),
            Some(Source::Computed { function: Some((schema, f)) })
                if self.catalog.function_carries(schema.as_deref(), f)
        )
    }

    /// Which output columns of a SELECT carry masked values.
    fn outputs(&self, select: &Select) -> Outputs {
        let from = self.scope.bindings_of(&select.from);
        let mut out = Outputs::default();
        let mut positions_known = true;
        for item in &select.projection {
            let (name, sensitive) = match item {
                SelectItem::UnnamedExpr(expr) => (output_name(expr), self.item_carries(expr)),
                SelectItem::ExprWithAlias { expr, alias } => {
                    (ident_text(alias), self.item_carries(expr))
                }
                SelectItem::ExprWithAliases { .. } => (String::new(), false),
                SelectItem::Wildcard(_) => {
                    positions_known = false;
                    let carries = from.iter().any(|&b| self.carries(b, 0));
                    out.carries |= carries;
                    out.after_unknown |= carries;
                    continue;
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    positions_known = false;
                    let carries = self.name_carries(&name_parts(n));
                    out.carries |= carries;
                    out.after_unknown |= carries;
                    continue;
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(_), _) => {
                    positions_known = false;
                    out.carries = true;
                    out.after_unknown = true;
                    continue;
                }
            };
            out.carries |= sensitive;
            if sensitive {
                out.names.insert(name);
            }
            if positions_known {
                out.positions.push(sensitive);
            } else {
                out.after_unknown |= sensitive;
            }
        }
        out
    }

    fn item_carries(&self, expr: &Expr) -> bool {
        plain_ref(expr).is_some_and(|r| self.ref_state(&ref_parts(r), 0) != RefState::Clean)
    }

    /// Does the query's result carry masked values?
    fn query_carries(&self, query: &Query) -> bool {
        self.body_carries(&query.body, 0)
    }

    fn body_carries(&self, body: &SetExpr, depth: usize) -> bool {
        if depth > MAX_RESOLVE_DEPTH {
            return true;
        }
        match body {
            SetExpr::Select(select) => self.outputs(select).carries,
            SetExpr::Query(query) => self.body_carries(&query.body, depth + 1),
            SetExpr::SetOperation { left, right, .. } => {
                self.body_carries(left, depth + 1) || self.body_carries(right, depth + 1)
            }
            SetExpr::Table(table) => self
                .scope
                .tables
                .get(&key(table.as_ref()))
                .is_none_or(|&b| self.carries(b, 0)),
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement) => returning(statement).is_some_and(|items| {
                let targets = self.scope.targets.get(&key(statement));
                items.iter().any(|item| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        self.item_carries(e)
                    }
                    SelectItem::ExprWithAliases { .. } => false,
                    _ => targets.into_iter().flatten().any(|&b| self.carries(b, 0)),
                })
            }),
            SetExpr::Values(_) | SetExpr::Merge(_) => false,
        }
    }
}

/// Which output columns of a SELECT carry masked values, for references by
/// name or position from ORDER BY, GROUP BY and DISTINCT ON.
#[derive(Debug, Default)]
struct Outputs {
    carries: bool,
    names: HashSet<String>,
    /// By position, up to the first `*`.
    positions: Vec<bool>,
    /// Something at or after the first `*` carries masked values.
    after_unknown: bool,
}

impl Outputs {
    /// Does `expr` (in ORDER BY, GROUP BY or DISTINCT ON) name a masked
    /// output column by its output name or position?
    fn names_masked(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Identifier(ident) => self.names.contains(&ident_text(ident)),
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => match n.parse::<usize>() {
                    Ok(position) if position >= 1 => self
                        .positions
                        .get(position - 1)
                        .copied()
                        .unwrap_or(self.after_unknown),
                    _ => false,
                },
                _ => false,
            },
            Expr::Nested(inner) => self.names_masked(inner),
            _ => false,
        }
    }
}

/// Second pass: every node of the statement, judged.
struct Check<'r> {
    res: &'r Resolver<'r>,
    allowed: &'r Allowed,
    /// `*` items of EXISTS subqueries: they decide only whether a row exists.
    exists_items: HashSet<usize>,
    depth: usize,
    nesting: usize,
    denial: Option<String>,
}

fn masked_expression(parts: &[String]) -> String {
    format!(
        "{} is masked: it may only be selected as a plain column, not used inside an expression, \
         condition, sort, grouping, set operation or copy",
        parts.join(".")
    )
}

fn masked_whole_row(name: &str) -> String {
    format!(
        "{name} has masked columns: a whole-row reference to it (like {name}, {name}.* in an \
         expression, row_to_json({name}) or {name}::text) would expose them"
    )
}

fn masked_wildcard(name: &str) -> String {
    format!(
        "{name} has masked columns: * over it is only allowed as a whole select-list item of the \
         top-level query, a subquery in FROM or a WITH query"
    )
}

impl Check<'_> {
    fn deny(&mut self, reason: String) -> ControlFlow<()> {
        self.denial = Some(reason);
        ControlFlow::Break(())
    }

    fn check_reference(&mut self, expr: &Expr) -> ControlFlow<()> {
        let parts = ref_parts(expr);
        let allowed = self.allowed.exprs.contains(&key(expr));
        match self.res.ref_state(&parts, 0) {
            RefState::WholeRow(name) => self.deny(masked_whole_row(&name)),
            RefState::Sensitive if !allowed => self.deny(masked_expression(&parts)),
            RefState::Sensitive if self.res.is_function_column(&parts) => self.deny(format!(
                "{} is masked and comes from a function result, whose columns output masking \
                 cannot follow",
                parts.join(".")
            )),
            _ => ControlFlow::Continue(()),
        }
    }

    fn check_function_name(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let parts = name_parts(name);
        match parts.last() {
            Some(f) if is_text_sql_function(f) => self.deny(format!(
                "{f}() runs SQL given as text (or dumps whole tables), which cannot be checked \
                 for masked columns"
            )),
            _ => ControlFlow::Continue(()),
        }
    }

    /// Wildcards of a select list that are not in an allowed place.
    fn check_wildcards(&mut self, items: &[SelectItem], from: &[usize]) -> ControlFlow<()> {
        for item in items {
            if self.exists_items.contains(&key(item)) {
                continue;
            }
            if self.allowed.items.contains(&key(item)) {
                // Allowed, unless it expands a function's result: PostgreSQL
                // reports no origin for those columns.
                let expanded: Vec<usize> = match item {
                    SelectItem::QualifiedWildcard(
                        SelectItemQualifiedWildcardKind::ObjectName(n),
                        _,
                    ) => {
                        let parts = name_parts(n);
                        let (_, name) = split_relation(&parts);
                        from.iter()
                            .copied()
                            .filter(|&b| {
                                self.res
                                    .scope
                                    .bindings
                                    .get(b)
                                    .and_then(|x| x.name.as_deref())
                                    == Some(name)
                            })
                            .collect()
                    }
                    _ => from.to_vec(),
                };
                if let Some(&b) = expanded.iter().find(|&&b| self.res.is_carrying_function(b)) {
                    let name = self
                        .res
                        .scope
                        .bindings
                        .get(b)
                        .and_then(|x| x.name.clone())
                        .unwrap_or_default();
                    return self.deny(format!(
                        "{name} returns rows with masked columns, and output masking cannot \
                         follow the columns of a function result"
                    ));
                }
                continue;
            }
            match item {
                SelectItem::Wildcard(_) => {
                    if let Some(&b) = from.iter().find(|&&b| self.res.carries(b, 0)) {
                        let name = self
                            .res
                            .scope
                            .bindings
                            .get(b)
                            .and_then(|x| x.name.clone())
                            .unwrap_or_else(|| "a subquery".into());
                        return self.deny(masked_wildcard(&name));
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    let parts = name_parts(n);
                    if self.res.name_carries(&parts) {
                        return self.deny(masked_wildcard(&parts.join(".")));
                    }
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    /// JOIN USING compares columns; NATURAL JOIN compares every column two
    /// sides share, which may be masked ones.
    fn check_joins(&mut self, from: &[TableWithJoins]) -> ControlFlow<()> {
        for twj in from {
            for join in &twj.joins {
                match join_constraint(&join.join_operator) {
                    Some(
                        JoinConstraint::Using(columns) | JoinConstraint::UsingAlias(columns, _),
                    ) => {
                        for column in columns {
                            let parts = name_parts(column);
                            let last = parts.last().cloned().unwrap_or_default();
                            if self.res.ident_state(&last, 0) != RefState::Clean {
                                return self.deny(masked_expression(&[last]));
                            }
                        }
                    }
                    Some(JoinConstraint::Natural) => {
                        let sides = self.res.scope.bindings_of(std::slice::from_ref(twj));
                        if let Some(&b) = sides.iter().find(|&&b| self.res.carries(b, 0)) {
                            let name = self
                                .res
                                .scope
                                .bindings
                                .get(b)
                                .and_then(|x| x.name.clone())
                                .unwrap_or_default();
                            return self.deny(format!(
                                "{name} has masked columns: NATURAL JOIN could compare them; \
                                 join with ON or USING on unmasked columns"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// ORDER BY / GROUP BY / DISTINCT ON naming a masked output column.
    fn check_output_refs<'e>(
        &mut self,
        outputs: &Outputs,
        exprs: impl IntoIterator<Item = &'e Expr>,
        clause: &str,
    ) -> ControlFlow<()> {
        for expr in exprs {
            if outputs.names_masked(expr) {
                return self.deny(format!(
                    "{clause} may not use a masked output column (by name or position)"
                ));
            }
        }
        ControlFlow::Continue(())
    }

    fn check_returning_wildcards(&mut self, statement: &Statement) -> ControlFlow<()> {
        let Some(items) = returning(statement) else {
            return ControlFlow::Continue(());
        };
        let targets = self
            .res
            .scope
            .targets
            .get(&key(statement))
            .cloned()
            .unwrap_or_default();
        self.check_wildcards(items, &targets)
    }

    fn check_relation(&mut self, parts: &[String]) -> ControlFlow<()> {
        let (schema, name) = split_relation(parts);
        if STATISTICS_RELATIONS.contains(&name) && schema.is_none_or(|s| s == "pg_catalog") {
            return self.deny(format!(
                "{name} shows samples of column values, including masked columns"
            ));
        }
        if let RelationInfo::TaintedView { source } = self.res.catalog.relation(schema, name) {
            return self.deny(format!(
                "view {} exposes masked column {source}; select from the table instead",
                parts.join(".")
            ));
        }
        ControlFlow::Continue(())
    }

    fn check_copy(&mut self, source: &CopySource) -> ControlFlow<()> {
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            // COPY (query) TO: the query is not an allowed place, so the
            // rest of the walk denies masked columns and wildcards in it.
            return ControlFlow::Continue(());
        };
        let parts = name_parts(table_name);
        self.check_relation(&parts)?;
        let (schema, name) = split_relation(&parts);
        let masked = if columns.is_empty() {
            self.res.relation_carries(schema, name)
        } else {
            columns
                .iter()
                .any(|c| self.res.table_column_masked(schema, name, &ident_text(c)))
        };
        if masked {
            return self.deny(format!(
                "COPY ... TO output has no column origins, so {} would be copied out unmasked; \
                 list only unmasked columns",
                parts.join(".")
            ));
        }
        ControlFlow::Continue(())
    }

    fn check_alter_table(
        &mut self,
        name: &ObjectName,
        operations: &[AlterTableOperation],
    ) -> ControlFlow<()> {
        let parts = name_parts(name);
        let (schema, table) = split_relation(&parts);
        let carries = self.res.relation_carries(schema, table);
        for op in operations {
            match op {
                AlterTableOperation::RenameColumn {
                    old_column_name, ..
                }
                | AlterTableOperation::ChangeColumn {
                    old_name: old_column_name,
                    ..
                } => {
                    let column = ident_text(old_column_name);
                    if self.res.table_column_masked(schema, table, &column) {
                        return self.deny(format!(
                            "renaming masked column {table}.{column} would unmask it"
                        ));
                    }
                }
                // A new type converts every value with functions (casts,
                // domain checks) the client may have written.
                AlterTableOperation::AlterColumn {
                    column_name,
                    op: AlterColumnOperation::SetDataType { .. },
                } => {
                    let column = ident_text(column_name);
                    if self.res.table_column_masked(schema, table, &column) {
                        return self.deny(format!(
                            "changing the type of masked column {table}.{column} would run \
                             conversion functions over its values"
                        ));
                    }
                }
                AlterTableOperation::AddConstraint {
                    constraint: TableConstraint::ForeignKey(fk),
                    ..
                } => self.check_foreign_key(fk)?,
                AlterTableOperation::AddColumn { column_def, .. } => {
                    self.check_column_def(column_def)?
                }
                AlterTableOperation::RenameTable { .. } if carries => {
                    return self.deny(format!(
                        "renaming {table} would change which of its columns are masked"
                    ));
                }
                AlterTableOperation::Inherit { .. } if carries => {
                    return self.deny(format!(
                        "{table} has masked columns: its rows would show through the parent table"
                    ));
                }
                AlterTableOperation::AttachPartitionOf { partition, .. } => {
                    let p = name_parts(partition);
                    let (ps, pn) = split_relation(&p);
                    if self.res.relation_carries(ps, pn) {
                        return self.deny(format!(
                            "{pn} has masked columns: its rows would show through {table}"
                        ));
                    }
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    /// A foreign key to a masked column answers "does this value exist in
    /// it?" for every row inserted on the referencing side.
    fn check_foreign_key(&mut self, fk: &ForeignKeyConstraint) -> ControlFlow<()> {
        let parts = name_parts(&fk.foreign_table);
        let (schema, table) = split_relation(&parts);
        for column in &fk.referred_columns {
            let column = ident_text(column);
            if self.res.table_column_masked(schema, table, &column) {
                return self.deny(format!(
                    "a foreign key to masked column {table}.{column} would reveal which values \
                     it holds"
                ));
            }
        }
        ControlFlow::Continue(())
    }

    fn check_column_def(&mut self, column: &ColumnDef) -> ControlFlow<()> {
        for option in &column.options {
            if let ColumnOption::ForeignKey(fk) = &option.option {
                self.check_foreign_key(fk)?;
            }
        }
        ControlFlow::Continue(())
    }

    /// A function body given as a string: SQL is parsed and checked (as a
    /// statement that returns nothing to the client); PL/pgSQL is scanned
    /// for names; anything else cannot be checked.
    fn check_function_body(
        &mut self,
        language: Option<&Ident>,
        body: Option<&CreateFunctionBody>,
    ) -> ControlFlow<()> {
        let text = match body {
            Some(CreateFunctionBody::AsBeforeOptions { body, .. })
            | Some(CreateFunctionBody::AsAfterOptions(body)) => string_value(body),
            // RETURN and BEGIN ATOMIC bodies are parsed SQL, walked as part
            // of the statement.
            _ => None,
        };
        let Some(text) = text else {
            return ControlFlow::Continue(());
        };
        let language = language.map(ident_text).unwrap_or_else(|| "sql".into());
        match language.to_lowercase().as_str() {
            "sql" => {
                let (_, parsed) = analyze_parsed(text);
                if parsed.iter().all(Option::is_some) {
                    for statement in parsed.iter().flatten() {
                        if let Err(reason) = check_statement(
                            statement,
                            self.res.catalog,
                            self.res.matcher,
                            false,
                            self.nesting + 1,
                        ) {
                            return self.deny(format!("function body: {reason}"));
                        }
                    }
                    return ControlFlow::Continue(());
                }
                self.scan_body(text)
            }
            "plpgsql" => self.scan_body(text),
            other => self.deny(format!(
                "masked columns are configured and a function in language {other} cannot be \
                 checked for them"
            )),
        }
    }

    /// Name scan of a body that cannot be parsed as SQL statements. Such a
    /// body can use a relation's rows without naming a masked column
    /// (`FOR r IN SELECT * FROM users LOOP RAISE NOTICE '%', r`), so without
    /// the catalog, which says which relations have masked columns, it is
    /// refused.
    fn scan_body(&mut self, text: &str) -> ControlFlow<()> {
        if !self.res.catalog.is_loaded() {
            return self.deny(
                "function bodies that are not plain SQL can only be checked for masked columns \
                 once the catalog of masked columns is loaded"
                    .into(),
            );
        }
        let tokens = match Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() {
            Ok(tokens) => tokens,
            Err(e) => {
                return self.deny(format!(
                    "function body cannot be read to check for masked columns: {e}"
                ))
            }
        };
        for token in tokens {
            let Token::Word(word) = token else {
                continue;
            };
            let name = if word.quote_style.is_some() {
                word.value.clone()
            } else {
                word.value.to_lowercase()
            };
            if word.quote_style.is_none() && name == "execute" {
                return self.deny(
                    "function body runs dynamic SQL (EXECUTE), which cannot be checked for \
                     masked columns"
                        .into(),
                );
            }
            if is_text_sql_function(&name) || STATISTICS_RELATIONS.contains(&name.as_str()) {
                return self.deny(format!(
                    "function body uses {name}, which cannot be checked for masked columns"
                ));
            }
            if self.res.matcher.may_match(&name) {
                return self.deny(format!(
                    "function body mentions {name}, a masked column name"
                ));
            }
            match self.res.catalog.relation(None, &name) {
                RelationInfo::HasSensitive { .. } | RelationInfo::TaintedView { .. } => {
                    return self.deny(format!(
                        "function body uses {name}, which has masked columns"
                    ))
                }
                RelationInfo::Clean | RelationInfo::Unknown => {}
            }
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Check<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Copy {
                source, to: true, ..
            } => self.check_copy(source),
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    self.check_relation(&name_parts(name))?;
                }
                self.check_returning_wildcards(statement)
            }
            Statement::Update(update) => {
                self.check_joins(std::slice::from_ref(&update.table))?;
                self.check_joins(update_from(&update.from))?;
                self.check_returning_wildcards(statement)
            }
            Statement::Delete(delete) => {
                self.check_joins(delete_tables(&delete.from))?;
                if let Some(using) = &delete.using {
                    self.check_joins(using)?;
                }
                self.check_returning_wildcards(statement)
            }
            Statement::CreateFunction(function) => self
                .check_function_body(function.language.as_ref(), function.function_body.as_ref()),
            Statement::CreateTrigger(trigger) => {
                let parts = name_parts(&trigger.table_name);
                let (schema, name) = split_relation(&parts);
                if self.res.relation_carries(schema, name) {
                    return self.deny(format!(
                        "{name} has masked columns: a trigger function sees whole rows and could \
                         copy them elsewhere"
                    ));
                }
                ControlFlow::Continue(())
            }
            Statement::AlterTable(alter) => self.check_alter_table(&alter.name, &alter.operations),
            Statement::CreateTable(table) => {
                for column in &table.columns {
                    self.check_column_def(column)?;
                }
                for constraint in &table.constraints {
                    if let TableConstraint::ForeignKey(fk) = constraint {
                        self.check_foreign_key(fk)?;
                    }
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                if !cte.alias.columns.is_empty() && self.res.query_carries(&cte.query) {
                    return self.deny(format!(
                        "WITH query {} renames masked columns with a column list; use aliases \
                         in its select list instead",
                        ident_text(&cte.alias.name)
                    ));
                }
            }
        }
        let mut denial = None;
        for_each_table(&query.body, &mut |schema, name| {
            let parts: Vec<String> = schema
                .iter()
                .map(|s| ident_text(s))
                .chain(std::iter::once(ident_text(name)))
                .collect();
            if denial.is_some() {
                return;
            }
            let (s, n) = split_relation(&parts);
            if let RelationInfo::TaintedView { source } = self.res.catalog.relation(s, n) {
                denial = Some(format!(
                    "view {} exposes masked column {source}; select from the table instead",
                    parts.join(".")
                ));
            }
        });
        if let Some(reason) = denial {
            return self.deny(reason);
        }
        if let Some(denial) = self.table_bodies(&query.body) {
            return self.deny(denial);
        }
        if let Some(order_by) = &query.order_by {
            if let OrderByKind::Expressions(exprs) = &order_by.kind {
                if let Some(select) = leftmost_select(&query.body) {
                    let outputs = self.res.outputs(select);
                    self.check_output_refs(&outputs, exprs.iter().map(|o| &o.expr), "ORDER BY")?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        let from = self.res.scope.bindings_of(&select.from);
        self.check_wildcards(&select.projection, &from)?;
        self.check_joins(&select.from)?;
        let outputs = self.res.outputs(select);
        match &select.distinct {
            Some(Distinct::Distinct) if outputs.carries => {
                return self.deny(
                    "DISTINCT over masked columns would reveal which of their values are equal"
                        .into(),
                )
            }
            Some(Distinct::On(exprs)) => {
                self.check_output_refs(&outputs, exprs, "DISTINCT ON")?;
            }
            _ => {}
        }
        if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
            self.check_output_refs(&outputs, exprs, "GROUP BY")?;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name, args: None, ..
            } => self.check_relation(&name_parts(name))?,
            TableFactor::Table { name, .. } | TableFactor::Function { name, .. } => {
                self.check_function_name(name)?
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.check_joins(std::slice::from_ref(table_with_joins.as_ref()))?,
            _ => {}
        }
        if factor_alias(factor).is_some_and(|a| !a.columns.is_empty()) {
            let carries = self
                .res
                .scope
                .factors
                .get(&key(factor))
                .is_none_or(|&b| self.res.carries(b, 0));
            if carries {
                return self.deny(
                    "a column alias list over masked columns would hide them; use aliases in the \
                     select list instead"
                        .into(),
                );
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return self.deny(too_deep());
        }
        match expr {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => self.check_reference(expr),
            Expr::QualifiedWildcard(name, _) => {
                let parts = name_parts(name);
                if self.res.name_carries(&parts) {
                    return self.deny(masked_whole_row(&parts.join(".")));
                }
                ControlFlow::Continue(())
            }
            Expr::Function(function) => {
                self.check_function_name(&function.name)?;
                // Called in an expression, a function returning rows of a
                // relation with masked columns yields whole rows.
                let parts = name_parts(&function.name);
                let (schema, name) = split_relation(&parts);
                if self.res.catalog.function_carries(schema, name) {
                    return self.deny(format!(
                        "{name}() returns rows with masked columns; call it in FROM and select \
                         only unmasked columns"
                    ));
                }
                if let FunctionArguments::List(list) = &function.args {
                    for arg in &list.args {
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = arg;
                        if let FunctionArgExpr::QualifiedWildcard(name) = arg {
                            let parts = name_parts(name);
                            if self.res.name_carries(&parts) {
                                return self.deny(masked_whole_row(&parts.join(".")));
                            }
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            Expr::Exists { subquery, .. } => {
                mark_exists_items(&subquery.body, &mut self.exists_items, 0);
                ControlFlow::Continue(())
            }
            Expr::In {
                target: InTarget::Table { name, .. },
                ..
            } => {
                let parts = name_parts(name);
                if self.res.name_carries(&parts) {
                    return self.deny(masked_wildcard(&parts.join(".")));
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

impl Check<'_> {
    /// `TABLE name` where origins are not tracked (a set operation, INSERT
    /// ... TABLE, a CTE of a recursive WITH) over masked columns.
    fn table_bodies(&self, body: &SetExpr) -> Option<String> {
        let mut denial = None;
        let mut visit = |table: &sqlparser::ast::Table| {
            if denial.is_some() || self.allowed.tables.contains(&key(table)) {
                return;
            }
            let carries = self
                .res
                .scope
                .tables
                .get(&key(table))
                .is_none_or(|&b| self.res.carries(b, 0));
            if carries {
                let name = table
                    .table_name
                    .as_ref()
                    .map(ident_text)
                    .unwrap_or_default();
                denial = Some(masked_wildcard(&name));
            }
        };
        tables_in(body, &mut visit);
        denial
    }
}

fn tables_in(body: &SetExpr, f: &mut dyn FnMut(&sqlparser::ast::Table)) {
    match body {
        SetExpr::Table(table) => f(table),
        SetExpr::SetOperation { left, right, .. } => {
            tables_in(left, f);
            tables_in(right, f);
        }
        _ => {}
    }
}

/// The first SELECT of a query body, whose output names ORDER BY sees.
fn leftmost_select(mut body: &SetExpr) -> Option<&Select> {
    // Bounded by the parser's recursion limit on nesting.
    loop {
        match body {
            SetExpr::Select(select) => return Some(select),
            SetExpr::Query(query) => body = query.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            _ => return None,
        }
    }
}

fn mark_exists_items(body: &SetExpr, items: &mut HashSet<usize>, depth: usize) {
    if depth > MAX_RESOLVE_DEPTH {
        return;
    }
    match body {
        SetExpr::Select(select) => {
            for item in &select.projection {
                if matches!(
                    item,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                ) {
                    items.insert(key(item));
                }
            }
        }
        SetExpr::Query(query) => mark_exists_items(&query.body, items, depth + 1),
        SetExpr::SetOperation { left, right, .. } => {
            mark_exists_items(left, items, depth + 1);
            mark_exists_items(right, items, depth + 1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
