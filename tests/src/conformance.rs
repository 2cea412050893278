//! The conformance suite's verdicts: each case of a real tool runs directly
//! against the server and then through the interceptor under
//! `policies/default.toml`, and ends with one verdict, which is asserted and
//! recorded for the README's table (`cargo xtask conformance` prints it):
//!
//! - **identical**: the same status and output both ways;
//! - **masked**: the same, but for the values a named mask hides;
//! - **denied**: refused by a named rule, with its message, where the
//!   direct run works.
//!
//! Driver scripts (tests/scripts/conformance_*.py) print one line per case,
//! `CASE <name>\t<result>`, where the result is what the library returned
//! (rows as JSON, or `ERROR <class>: <message>`), so that one denied case
//! does not hide the next one.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::Write,
    path::PathBuf,
    process::Output,
};

/// Where the verdicts of a run are written, one TSV file per test process:
/// `INTERCEPTOR_CONFORMANCE_DIR` (set by `cargo xtask test` and
/// `conformance`), else target/conformance/verdicts of the workspace.
pub fn verdicts_dir() -> PathBuf {
    std::env::var_os("INTERCEPTOR_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/conformance/verdicts"))
}

/// What a case is expected to come to.
#[derive(Clone, Copy, Debug)]
pub enum Expect<'a> {
    /// Same status and output both ways.
    Identical,
    /// Intercepted, the output differs from direct only in that these
    /// values (present direct) are gone and `********` stands in: mask `mask`.
    Masked {
        mask: &'a str,
        hidden: &'a [&'a str],
    },
    /// Intercepted, refused by rule `rule` (its name in the error).
    Denied { rule: &'a str },
}

impl Expect<'_> {
    fn label(&self) -> (&'static str, &str) {
        match self {
            Expect::Identical => ("identical", ""),
            Expect::Masked { mask, .. } => ("masked", mask),
            Expect::Denied { rule } => ("denied", rule),
        }
    }
}

fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// Appends one verdict line: `tool \t case \t verdict \t rule-or-mask \t note`.
pub fn record(tool: &str, case: &str, expect: Expect<'_>, note: &str) {
    let dir = verdicts_dir();
    fs::create_dir_all(&dir).expect("create the verdicts directory");
    let (verdict, name) = expect.label();
    let line = format!(
        "{}\t{}\t{verdict}\t{}\t{}\n",
        clean(tool),
        clean(case),
        clean(name),
        clean(note)
    );
    let path = dir.join(format!("{}.tsv", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the verdicts file");
    // One write per line: appends of a few hundred bytes do not interleave.
    f.write_all(line.as_bytes()).expect("write a verdict");
}

/// The `CASE name\tresult` lines of a driver's stdout, by case name.
pub fn cases(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("CASE "))
        .map(|l| match l.split_once('\t') {
            Some((name, result)) => (name.to_string(), result.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Checks one case's two results against `expect`, panics with both on a
/// mismatch, and records the verdict. `context` is added to a panic (the
/// daemon log, say).
pub fn check(
    tool: &str,
    case: &str,
    direct: &str,
    intercepted: &str,
    expect: Expect<'_>,
    note: &str,
    context: &dyn Fn() -> String,
) {
    let fail = |why: &str| -> ! {
        panic!(
            "{tool} / {case}: {why}\n  direct:      {direct}\n  intercepted: {intercepted}\n{}",
            context()
        )
    };
    if direct.starts_with("ERROR") {
        fail("fails even direct");
    }
    match expect {
        Expect::Identical => {
            if direct != intercepted {
                fail("intercepted differs from direct");
            }
        }
        Expect::Masked { hidden, .. } => {
            for value in hidden {
                if !direct.contains(value) {
                    fail(&format!("{value:?} is not in the direct result"));
                }
                if intercepted.contains(value) {
                    fail(&format!("{value:?} reached the client in clear"));
                }
            }
            if !intercepted.contains("********") || intercepted.starts_with("ERROR") {
                fail("not masked");
            }
            let mut unmasked = direct.to_string();
            for value in hidden {
                unmasked = unmasked.replace(value, "********");
            }
            if !same_but_masked(&unmasked, intercepted) {
                fail("intercepted differs from direct in more than the masked values");
            }
        }
        Expect::Denied { rule } => {
            if !intercepted.starts_with("ERROR") || !intercepted.contains(&format!("\"{rule}\"")) {
                fail(&format!("not denied by rule {rule:?}"));
            }
        }
    }
    record(tool, case, expect, note);
}

/// `a` and `b` are equal, where a `********` in `a` (a value known to be
/// masked) may stand for any `********`-bearing text in `b` (a mask may
/// also have hidden a value's neighbours, e.g. a whole JSON string).
fn same_but_masked(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    // The parts between masks must come in the same order, the first one
    // at the start and the last one at the end.
    let parts: Vec<&str> = a.split("********").collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() < 2 || !b.starts_with(first) || !b.ends_with(last) {
        return false;
    }
    let mut rest = &b[first.len()..];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len()
}

/// Runs every case of `expects` (the driver's case names, in order) on
/// the two outputs, with [`check`]; also fails on a case the driver did not
/// report, or one it reported that has no expectation.
pub fn check_driver(
    tool: &str,
    direct: &Output,
    intercepted: &Output,
    expects: &[(&str, Expect<'_>, &str)],
    context: &dyn Fn() -> String,
) {
    let (d, i) = (cases(direct), cases(intercepted));
    let all = || {
        format!(
            "direct:\n{}\nintercepted:\n{}\n{}",
            crate::output_text(direct),
            crate::output_text(intercepted),
            context()
        )
    };
    for name in d.keys().chain(i.keys()) {
        assert!(
            expects.iter().any(|(n, _, _)| n == name),
            "{tool}: case {name} has no expected verdict\n{}",
            all()
        );
    }
    for (name, expect, note) in expects {
        let (Some(dr), Some(ir)) = (d.get(*name), i.get(*name)) else {
            panic!("{tool}: case {name} did not run both ways\n{}", all());
        };
        check(tool, name, dr, ir, *expect, note, &all);
    }
}

#[cfg(test)]
mod tests {
    use super::same_but_masked;

    #[test]
    fn masked_parts_may_cover_more_than_the_value() {
        assert!(same_but_masked("a ******** b", "a ******** b"));
        assert!(same_but_masked(
            "[\"x\", \"********\"]",
            "[\"x\", \"********\"]"
        ));
        assert!(same_but_masked("k=******** z", "k=******** z"));
        assert!(!same_but_masked("k=******** z", "k=******** y"));
        assert!(same_but_masked(
            "\"********\", 3",
            "\"******** (masked)\", 3"
        ));
        assert!(!same_but_masked("a b", "a c"));
        assert!(!same_but_masked("x ********", "y ********"));
    }
}
