//! Masking for one PostgreSQL store: which result columns are masked and
//! how, and the rewriting of row descriptions, rows, COPY data and errors.
//!
//! A column is masked when the (table OID, attribute number) PostgreSQL
//! reports for it is a sensitive column or belongs to a view built on one
//! (per the catalog the session read), when its table OID is one the catalog
//! does not know yet (fail closed: the catalog is refreshed and the next
//! query sees the truth), or when its output name matches a pattern. Values
//! flowing through expressions never reach this point: the static check in
//! [`crate::policy::mask_sql`] denies those statements.

use std::sync::Arc;

use bytes::Bytes;

use super::backend::{ErrorResponse, Field, NoticeResponse, RowDescription};
use super::codec::{Format, Frame, Message, PgStr};
use super::frontend::format_of;
use crate::audit::hostkey::HostKey;
use crate::config::{MaskConfig, MaskStrategy};
use crate::mask::{self, sections_for, ColumnPatterns, Masked, StoreDetectors};
use crate::policy::mask_sql::{ColumnMatcher, MaskCatalog};

/// `text`: what a masked column is declared as, so clients accept the mask
/// text whatever the column's real type.
const TEXT_OID: u32 = 25;

/// Types whose values (text or binary format) are UTF-8 text that value
/// detectors can scan.
fn is_textual(type_oid: u32) -> bool {
    matches!(
        type_oid,
        25 | 1043 | 1042 | 19 | 18 | 705 | 114 | 142 | 3802 | 1009 | 1015
    )
}

/// The masks of one store, compiled.
pub struct StoreMasks {
    /// `[[mask]] columns`, one entry per mask section that has some.
    columns: Vec<ColumnMask>,
    /// `[[mask]] detectors`.
    detectors: StoreDetectors,
    pub key: HostKey,
}

struct ColumnMask {
    patterns: ColumnPatterns,
    strategy: MaskStrategy,
}

/// The catalog as every mask section sees it: the union (for the static
/// check and "is this column masked at all") and one per section (for which
/// strategy applies).
pub struct Catalogs {
    pub union: MaskCatalog,
    per_mask: Vec<MaskCatalog>,
}

impl Catalogs {
    pub fn empty(masks: &StoreMasks) -> Catalogs {
        Catalogs {
            union: MaskCatalog::empty(),
            per_mask: masks.columns.iter().map(|_| MaskCatalog::empty()).collect(),
        }
    }

    /// Builds the catalogs from the rows of [`crate::policy::mask_sql::CATALOG_SQL`].
    pub fn from_rows(rows: &[Vec<Option<String>>], masks: &StoreMasks) -> Result<Catalogs, String> {
        let per_mask = masks
            .columns
            .iter()
            .map(|m| MaskCatalog::from_rows(rows, &m.patterns))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Catalogs {
            union: MaskCatalog::from_rows(rows, masks)?,
            per_mask,
        })
    }
}

impl ColumnMatcher for StoreMasks {
    fn matches(&self, schema: Option<&str>, table: &str, column: &str) -> bool {
        self.columns
            .iter()
            .any(|m| m.patterns.matches(schema, table, column))
    }

    fn may_match(&self, column: &str) -> bool {
        self.columns.iter().any(|m| m.patterns.may_match(column))
    }

    fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

impl ColumnMatcher for ColumnPatterns {
    fn matches(&self, schema: Option<&str>, table: &str, column: &str) -> bool {
        ColumnPatterns::matches(self, schema, table, column)
    }

    fn may_match(&self, column: &str) -> bool {
        ColumnPatterns::may_match(self, column)
    }

    fn is_empty(&self) -> bool {
        ColumnPatterns::is_empty(self)
    }
}

impl StoreMasks {
    /// The `[[mask]]` sections that apply to `store`.
    pub fn new(store: &str, masks: &[MaskConfig], key: HostKey) -> anyhow::Result<StoreMasks> {
        let columns = sections_for(store, masks)
            .filter_map(|m| {
                m.columns.as_ref().map(|columns| ColumnMask {
                    patterns: ColumnPatterns::new(columns),
                    strategy: m.strategy,
                })
            })
            .collect();
        Ok(StoreMasks {
            columns,
            detectors: StoreDetectors::new(store, masks)?,
            key,
        })
    }

    /// Whether any column pattern applies (then the session reads the
    /// catalog, checks statements statically and describes every prepared
    /// statement).
    pub fn has_columns(&self) -> bool {
        !self.columns.is_empty()
    }

    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// How to treat each column of a result. `unknown` is set when a column
    /// comes from a table OID the catalog does not know (the caller then
    /// refreshes the catalog).
    pub fn plan(&self, fields: &[Field], formats: Option<&[Format]>, catalogs: &Catalogs) -> Plan {
        let mut cols = Vec::with_capacity(fields.len());
        let mut active = false;
        let mut unknown = false;
        for (i, f) in fields.iter().enumerate() {
            let format = formats.map_or(f.format, |fs| format_of(fs, i));
            let mut strategy = None;
            if self.has_columns() {
                if f.table_oid != 0 {
                    if !catalogs.union.knows(f.table_oid) {
                        unknown = true;
                        // Fail closed with the first column mask's strategy.
                        strategy = self.columns.first().map(|m| m.strategy);
                    } else if catalogs.union.sensitive_attr(f.table_oid, f.column_attr) {
                        strategy = self
                            .columns
                            .iter()
                            .zip(&catalogs.per_mask)
                            .find(|(_, c)| c.sensitive_attr(f.table_oid, f.column_attr))
                            .map(|(m, _)| m.strategy)
                            .or_else(|| self.columns.first().map(|m| m.strategy));
                    }
                }
                if strategy.is_none() {
                    strategy = self
                        .columns
                        .iter()
                        .find(|m| m.patterns.matches_name(&f.name))
                        .map(|m| m.strategy);
                }
            }
            let scan = strategy.is_none()
                && self.has_detectors()
                && (is_textual(f.type_oid) || (format == Format::Text && f.type_oid == 0));
            active |= strategy.is_some() || scan;
            cols.push(ColPlan { strategy, scan });
        }
        Plan {
            cols: Arc::new(cols),
            active,
            unknown,
        }
    }

    /// The RowDescription the client gets: masked columns (other than
    /// `null`) are declared `text`.
    pub fn rewrite_description(&self, rd: &RowDescription, plan: &Plan) -> Option<Bytes> {
        if !plan.cols.iter().any(|c| c.declares_text()) {
            return None;
        }
        let mut out = rd.clone();
        for (f, c) in out.fields.iter_mut().zip(plan.cols.iter()) {
            if c.declares_text() {
                f.type_oid = TEXT_OID;
                f.type_size = -1;
                f.type_modifier = -1;
            }
        }
        Some(out.to_bytes())
    }

    /// Rewrites one DataRow frame under `plan`. `None`: forward it as is.
    /// The count is the number of values masked.
    pub fn mask_row(&self, frame: &Frame, plan: &Plan) -> Result<Option<(Bytes, u64)>, String> {
        let row = super::backend::DataRow::decode_body(&frame.body).map_err(|e| e.to_string())?;
        let mut changed = false;
        let mut masked = 0u64;
        let mut values: Vec<Option<Bytes>> = Vec::with_capacity(row.columns.len());
        for (i, value) in row.columns.into_iter().enumerate() {
            let Some(plan) = plan.cols.get(i) else {
                values.push(value);
                continue;
            };
            let Some(v) = value else {
                values.push(None);
                continue;
            };
            if let Some(strategy) = plan.strategy {
                changed = true;
                masked += 1;
                values.push(match mask::apply(strategy, &v, &self.key) {
                    Masked::Null => None,
                    Masked::Value(b) => Some(Bytes::from(b)),
                });
            } else if plan.scan {
                match self.scan(&v) {
                    Some((m, n)) => {
                        changed = true;
                        masked += n as u64;
                        values.push(match m {
                            Masked::Null => None,
                            Masked::Value(b) => Some(Bytes::from(b)),
                        });
                    }
                    None => values.push(Some(v)),
                }
            } else {
                values.push(Some(v));
            }
        }
        if !changed {
            return Ok(None);
        }
        let out = super::backend::DataRow { columns: values }.to_bytes();
        Ok(Some((out, masked)))
    }

    /// Runs the value detectors over text; `None` when nothing was found.
    pub fn scan(&self, value: &[u8]) -> Option<(Masked, usize)> {
        let text = std::str::from_utf8(value).ok()?;
        let (m, n) = self.detectors.scan(text, &self.key)?;
        Some((m, n as usize))
    }

    /// Masks credentials in one COPY text chunk (COPY of masked columns is
    /// denied before it runs; this catches credentials in other columns).
    pub fn mask_copy(&self, data: &[u8]) -> Option<(Bytes, u64)> {
        match self.scan(data)? {
            (Masked::Value(b), n) => Some((Bytes::from(b), n as u64)),
            (Masked::Null, n) => Some((Bytes::from_static(b"********"), n as u64)),
        }
    }

    /// Errors and notices: detectors over every text field; for data
    /// exceptions and integrity violations (classes 22 and 23), whose DETAIL
    /// echoes row values ("Failing row contains (...)"), the DETAIL is
    /// replaced when the store masks columns, unless the error names its
    /// table (fields `s` and `t`) and `catalog` knows that table has no
    /// masked column.
    pub fn mask_error(&self, frame: &Frame, catalog: &MaskCatalog) -> Option<(Bytes, u64)> {
        let notice = frame.tag? == b'N';
        let fields = parse_fields(&frame.body)?;
        let code = fields
            .iter()
            .find(|(t, _)| *t == b'C')
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let field = |tag: u8| {
            fields
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, v)| v.as_str())
        };
        let clean_table = field(b't').is_some_and(|table| {
            matches!(
                catalog.relation(field(b's'), table),
                crate::policy::mask_sql::RelationInfo::Clean
            )
        });
        let hide_detail = self.has_columns()
            && (code.starts_with("22") || code.starts_with("23"))
            && !clean_table;
        let mut changed = false;
        let mut masked = 0u64;
        let mut out_fields = Vec::with_capacity(fields.len());
        for (t, v) in fields {
            if hide_detail && t == b'D' {
                changed = true;
                masked += 1;
                out_fields.push((
                    t,
                    PgStr::from("(detail hidden by interceptor: it may echo masked values)"),
                ));
                continue;
            }
            if matches!(t, b'M' | b'D' | b'H' | b'W' | b'q') && self.has_detectors() {
                if let Some((m, n)) = self.scan(v.as_bytes()) {
                    changed = true;
                    masked += n as u64;
                    let text = match m {
                        Masked::Null => PgStr::from(mask::REDACTED),
                        Masked::Value(b) => PgStr::from(String::from_utf8_lossy(&b).into_owned()),
                    };
                    out_fields.push((t, text));
                    continue;
                }
            }
            out_fields.push((t, PgStr::from(v)));
        }
        if !changed {
            return None;
        }
        let bytes = if notice {
            NoticeResponse {
                fields: out_fields,
                raw: Vec::new(),
            }
            .to_bytes()
        } else {
            ErrorResponse {
                fields: out_fields,
                raw: Vec::new(),
            }
            .to_bytes()
        };
        Some((bytes, masked))
    }
}

/// One column's treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColPlan {
    pub strategy: Option<MaskStrategy>,
    pub scan: bool,
}

impl ColPlan {
    fn declares_text(&self) -> bool {
        matches!(self.strategy, Some(s) if s != MaskStrategy::Null)
    }
}

/// How to treat the rows of one result.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub cols: Arc<Vec<ColPlan>>,
    /// Some column is masked or scanned (otherwise rows pass untouched).
    pub active: bool,
    pub unknown: bool,
}

impl Plan {
    /// Rows of a result whose columns the proxy never saw described:
    /// everything is masked (fail closed).
    pub fn mask_all(columns: usize) -> Plan {
        Plan {
            cols: Arc::new(vec![
                ColPlan {
                    strategy: Some(MaskStrategy::Redact),
                    scan: false,
                };
                columns
            ]),
            active: true,
            unknown: true,
        }
    }
}

/// The (code, text) fields of an ErrorResponse or NoticeResponse body,
/// read leniently: a server whose messages are not UTF-8 (another
/// `client_encoding`) still gets its errors masked, where the strict
/// [`ErrorResponse`] decoder would refuse them. Re-encoded with that type.
pub fn parse_fields(body: &[u8]) -> Option<Vec<(u8, String)>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (&t, tail) = rest.split_first()?;
        if t == 0 {
            return Some(out);
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        out.push((t, String::from_utf8_lossy(&tail[..nul]).into_owned()));
        rest = &tail[nul + 1..];
    }
}
