//! The conformance suite's verdict table: the tests in
//! tests/tests/conformance*.rs record one line per case in
//! target/conformance/verdicts/ (tests/src/conformance.rs); this renders
//! them as the Markdown table the README shows.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::util::{step, target_dir, workspace_root};

fn dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("conformance"))
}

/// Where the tests write their verdicts (`INTERCEPTOR_CONFORMANCE_DIR`).
pub fn verdicts_dir() -> Result<PathBuf> {
    Ok(dir()?.join("verdicts"))
}

/// Removes the verdicts of an earlier run, so that the table is this run's.
pub fn clear() -> Result<()> {
    let verdicts = verdicts_dir()?;
    if verdicts.exists() {
        fs::remove_dir_all(&verdicts)
            .with_context(|| format!("cannot remove {}", verdicts.display()))?;
    }
    Ok(())
}

/// The test targets of the suite: `conformance*` in tests/tests.
pub fn test_targets() -> Result<Vec<String>> {
    let tests = workspace_root().join("tests/tests");
    let mut names = Vec::new();
    for entry in fs::read_dir(&tests).with_context(|| format!("cannot read {}", tests.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs") {
            if stem.starts_with("conformance") {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

struct Row {
    tool: String,
    case: String,
    verdict: String,
    name: String,
    note: String,
}

fn parse(line: &str) -> Option<Row> {
    let mut f = line.split('\t');
    Some(Row {
        tool: f.next()?.to_string(),
        case: f.next()?.to_string(),
        verdict: f.next()?.to_string(),
        name: f.next()?.to_string(),
        note: f.next().unwrap_or("").to_string(),
    })
}

/// The Markdown table of `lines` (TSV verdict lines), one row per tool and
/// case (a case recorded twice keeps its last verdict), tools in the order
/// they first appear, and a count of each verdict.
pub fn render(lines: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut by_tool: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in lines.iter().filter_map(|l| parse(l)) {
        if !order.contains(&row.tool) {
            order.push(row.tool.clone());
        }
        let rows = by_tool.entry(row.tool.clone()).or_default();
        match rows.iter_mut().find(|r| r.case == row.case) {
            Some(old) => *old = row,
            None => rows.push(row),
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut table = String::from(
        "| tool | case | verdict | rule or mask | note |\n| --- | --- | --- | --- | --- |\n",
    );
    for tool in &order {
        for r in by_tool.get(tool).into_iter().flatten() {
            *counts.entry(r.verdict.as_str()).or_default() += 1;
            let name = if r.name.is_empty() {
                String::new()
            } else {
                format!("`{}`", r.name)
            };
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.tool,
                r.case.replace('|', "\\|"),
                r.verdict,
                name,
                r.note.replace('|', "\\|")
            ));
        }
    }
    let total: usize = counts.values().sum();
    let summary: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    format!("{total} cases: {}\n\n{table}", summary.join(", "))
}

fn read_all() -> Result<Vec<String>> {
    let verdicts = verdicts_dir()?;
    let mut files: Vec<PathBuf> = match fs::read_dir(&verdicts) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(Vec::new()),
    };
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        let text =
            fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        lines.extend(text.lines().map(str::to_string));
    }
    Ok(lines)
}

/// Writes target/conformance/verdicts.md from this run's verdicts and
/// returns its text (empty when no case was recorded).
pub fn report_if_any() -> Result<String> {
    let lines = read_all()?;
    if lines.is_empty() {
        return Ok(String::new());
    }
    let text = render(&lines);
    let path = dir()?.join("verdicts.md");
    fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    step(format!("conformance verdicts: {}", path.display()));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn one_row_per_case_in_first_seen_tool_order() {
        let lines: Vec<String> = [
            "psql\t\\d users\tidentical\t\t",
            "redis-cli\tGET secret:db\tmasked\tsecret-keys\tvalue hidden",
            "psql\tCREATE TABLE\tdenied\tno-ddl\t",
            "psql\t\\d users\tidentical\t\tagain",
            "not a verdict line",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = render(&lines);
        assert!(
            t.starts_with("3 cases: 1 denied, 1 identical, 1 masked\n"),
            "{t}"
        );
        let rows: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("| psql") || l.starts_with("| redis"))
            .collect();
        assert_eq!(
            rows,
            [
                "| psql | \\d users | identical |  | again |",
                "| psql | CREATE TABLE | denied | `no-ddl` |  |",
                "| redis-cli | GET secret:db | masked | `secret-keys` | value hidden |",
            ]
        );
    }
}
