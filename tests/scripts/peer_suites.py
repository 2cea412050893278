"""Compares a peer library's test suite run direct and through interceptor.

Reads DIR/direct.xml, DIR/permissive.xml and DIR/default.xml (pytest's
JUnit reports, written by interceptor-peer-suites) and the exceptions file
(tests/peer_suites.toml), and judges every test that passed direct:

- permissive (the store, no rule, no mask): it must pass intercepted too,
  unless an exception names it and says why it cannot be served;
- default (policies/default.toml): it passes, or it fails on a denial
  (the failure carries interceptor's message, and the rule is counted),
  or on a masked value, or an exception names it.

Anything else is a regression. Prints a summary, writes DIR/report.md (the
README's table rows) and DIR/report.json, and exits 1 on a regression.
"""

import argparse
import collections
import fnmatch
import json
import re
import sys
import tomllib
import xml.etree.ElementTree as ET

PASSED = ("passed", "xpassed")
RULE = re.compile(r'rule[ :]+\\?"([A-Za-z0-9_.-]+)\\?"|\(rule ([A-Za-z0-9_.-]+)\)')
MASK = "********"


def outcomes(path):
    """{test id: (outcome, text)} of one JUnit report."""
    tree = ET.parse(path)
    result = {}
    for case in tree.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        if test == "pytest::internal":
            continue
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
                text = f"{child.get('message') or ''}\n{child.text or ''}"
                break
            if child.tag == "skipped":
                kind = child.get("type") or ""
                outcome = "xfailed" if kind == "pytest.xfail" else "skipped"
                text = child.get("message") or ""
        # A test that failed in teardown is listed twice: keep the worst.
        if test in result and result[test][0] in ("failure", "error"):
            continue
        result[test] = (outcome, text)
    return result


def exception_for(exceptions, suite, config, test):
    for e in exceptions:
        if e.get("suite") != suite:
            continue
        if e.get("config", "both") not in (config, "both"):
            continue
        if any(fnmatch.fnmatchcase(test, p) for p in e.get("tests", [])):
            return e
    return None


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:160]
    return ""


def rule_of(text, messages):
    """The rule a denial names, or whose message it carries."""
    found = RULE.search(text)
    if found:
        return found.group(1) or found.group(2)
    for name, message in messages:
        if message and message[:60] in text:
            return name
    return "(rule not named)"


def judge(suite, config, direct, run, exceptions, messages):
    verdicts = collections.Counter()
    rules = collections.Counter()
    explained = collections.Counter()
    regressions = []
    for test, (outcome, _) in sorted(direct.items()):
        if outcome not in PASSED:
            continue
        got, text = run.get(test, ("not run", ""))
        # A test marked xfail that passed direct (xpassed) and fails
        # intercepted is still a success for pytest: both are expected.
        if got in PASSED or (outcome == "xpassed" and got == "xfailed"):
            verdicts["passed"] += 1
            continue
        e = exception_for(exceptions, suite, config, test)
        if config == "default" and "interceptor:" in text:
            verdicts["denied"] += 1
            rules[rule_of(text, messages)] += 1
        elif config == "default" and MASK in text:
            verdicts["masked"] += 1
        elif e is not None:
            verdicts["explained"] += 1
            explained[e["reason"]] += 1
        else:
            verdicts["regression"] += 1
            regressions.append((test, got, first_line(text)))
    return verdicts, rules, explained, regressions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--exceptions", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--configs", default="direct,permissive,default")
    a = ap.parse_args()
    with open(a.exceptions, "rb") as f:
        exceptions = tomllib.load(f).get("exception", [])
    with open(a.policy, "rb") as f:
        messages = [(r["name"], r.get("message", ""))
                    for r in tomllib.load(f).get("rule", [])]
    direct = outcomes(f"{a.dir}/direct.xml")
    counts = collections.Counter(o for o, _ in direct.values())
    passed_direct = sum(counts[o] for o in PASSED)
    report = {
        "suite": a.suite,
        "direct": dict(counts),
        "passed_direct": passed_direct,
    }
    ok = True
    print(f"{a.suite}: {len(direct)} tests, {passed_direct} pass direct "
          f"({', '.join(f'{n} {o}' for o, n in sorted(counts.items()))})")
    rows = []
    for config in a.configs.split(","):
        if config == "direct":
            continue
        run = outcomes(f"{a.dir}/{config}.xml")
        verdicts, rules, explained, regressions = judge(
            a.suite, config, direct, run, exceptions, messages)
        report[config] = {
            "verdicts": dict(verdicts),
            "rules": dict(rules),
            "explained": dict(explained),
            "regressions": regressions,
        }
        print(f"  {config}: " + ", ".join(
            f"{n} {v}" for v, n in sorted(verdicts.items())))
        for rule, n in rules.most_common():
            print(f"    denied by {rule}: {n}")
        for reason, n in explained.most_common():
            print(f"    exception ({n}): {reason}")
        for test, got, line in regressions:
            print(f"    REGRESSION {test}: {got}: {line}")
        if regressions:
            ok = False
        denials = ", ".join(f"`{r}` {n}" for r, n in rules.most_common())
        rows.append(
            f"| {a.suite} | {config} | {passed_direct} | {verdicts['passed']} "
            f"| {verdicts['explained']} | {verdicts['denied']} "
            f"| {verdicts['masked']} | {verdicts['regression']} | {denials} |")
    with open(f"{a.dir}/report.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(f"{a.dir}/report.md", "w") as f:
        f.write("\n".join(rows) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
