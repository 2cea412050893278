"""The Python side of `cargo xtask demo` (tests/src/bin/interceptor-demo.rs).

Job steps, run inside the intercepted cgroup like any CI task (they know
nothing of interceptor; connection settings come from the environment the
way CI jobs get them: PG*, REDIS_URL, BAO_ADDR/BAO_TOKEN):

  psycopg-select ID     SELECT a user's name and credentials (extended protocol)
  psycopg-delete        DELETE FROM users without a WHERE clause
  redis-py KEY...       GET each key with redis-py
  hvac-read PATH        read a KV v2 secret with hvac

And the analyst's view, run outside:

  audit AUDIT_DIR SINCE_US   the Parquet audit trail of this demo run, with DuckDB
"""

import os
import sys


def psycopg_select(user_id):
    import psycopg

    # Connection parameters from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
    with psycopg.connect("") as conn:
        rows = conn.execute(
            "SELECT name, password, deploy_token FROM users WHERE id = %s", (int(user_id),)
        ).fetchall()
    for name, password, token in rows:
        print(f"name={name} password={password} deploy_token={token}")


def psycopg_delete():
    import psycopg

    with psycopg.connect("") as conn:
        try:
            cur = conn.execute("DELETE FROM users")
            print(f"deleted {cur.rowcount} rows")
        except psycopg.Error as e:
            d = e.diag
            print(f"psycopg.errors.{type(e).__name__} (SQLSTATE {d.sqlstate}): {d.message_primary}")
            if d.message_detail:
                print(f"DETAIL: {d.message_detail}")
            if d.message_hint:
                print(f"HINT: {d.message_hint}")


def redis_py(*keys):
    import redis

    r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    for key in keys:
        print(f"{key} = {r.get(key)!r}")


def hvac_read(path):
    import hvac

    c = hvac.Client(url=os.environ["BAO_ADDR"], token=os.environ["BAO_TOKEN"])
    r = c.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    for k, v in sorted(r["data"]["data"].items()):
        print(f"{k} = {v}")
    print(f"(version {r['data']['metadata']['version']})")


QUERY = """
SELECT strftime(e.ts, '%H:%M:%S')        AS time,
       s.ci_job                           AS ci_job,
       s.uid                              AS uid,
       s.comm || ' ' || s.pid             AS process,
       e.store                            AS store,
       e.command                          AS command,
       e.statement                        AS statement,
       e.target                           AS target,
       e.decision                         AS decision,
       coalesce(e.rule, '')               AS rule,
       e.masked_values                    AS masked
FROM read_parquet('{audit}/events/**/*.parquet', hive_partitioning = true) e
JOIN read_parquet('{audit}/sessions/**/*.parquet', hive_partitioning = true) s USING (session_id)
WHERE s.started_at >= make_timestamp({since})
ORDER BY e.ts
"""


def audit(audit_dir, since_us):
    import duckdb

    sql = QUERY.format(audit=audit_dir, since=int(since_us))
    print("DuckDB, on the Parquet files the daemon wrote:")
    for line in sql.strip().splitlines():
        print("    " + line)
    print()
    rel = duckdb.sql(sql)
    header = rel.columns
    rows = [["" if v is None else str(v) for v in row] for row in rel.fetchall()]
    if not rows:
        raise SystemExit("the audit trail has no events for this run")
    limit = {"statement": 34, "ci_job": 32, "command": 24, "target": 24}
    for row in rows:
        for i, name in enumerate(header):
            n = limit.get(name)
            if n and len(row[i]) > n:
                row[i] = row[i][: n - 1] + "…"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    decisions = {}
    for row in rows:
        decisions[row[header.index("decision")]] = decisions.get(row[header.index("decision")], 0) + 1
    summary = ", ".join(f"{n} {d}" for d, n in sorted(decisions.items()))
    print(f"\n{len(rows)} events ({summary})")


if __name__ == "__main__":
    name, args = sys.argv[1].replace("-", "_"), sys.argv[2:]
    globals()[name](*args)
