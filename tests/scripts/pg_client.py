#!/usr/bin/env python3
"""psycopg client for the PostgreSQL tests: runs statements, prints JSON.

Usage: pg_client.py SCENARIO DSN [ARGS...]

Scenarios:
  run MODE SQL...      each SQL in its own autocommit call; MODE is one of
                       extended (psycopg default: Parse/Bind/Execute),
                       prepared (named server-side prepared statements),
                       binary (extended, binary result format),
                       client (ClientCursor: values inlined by the client),
                       pipeline (all SQL sent in one libpq pipeline).
                       Prints [{"sql", "ok", "sqlstate", "message", "rows"}].
  txn                  denial inside an explicit transaction: prints the
                       steps' outcomes and whether the insert survived.
  cancel               runs pg_sleep(30) and cancels it from another thread
  cancel_safe          the same with conn.cancel_safe() (libpq 17+ cancel API)
                       once the server runs it; prints {"sqlstate", "seconds"}.
  info                 prints {"user", "ssl", "db"} as the server sees them.
"""

import json
import sys
import threading
import time

import psycopg


def cell(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "replace")
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def outcome(sql, fn):
    try:
        rows = fn()
        return {"sql": sql, "ok": True, "sqlstate": None, "message": None,
                "rows": [[cell(c) for c in r] for r in (rows or [])]}
    except psycopg.Error as e:
        return {"sql": sql, "ok": False, "sqlstate": e.sqlstate,
                "message": str(e), "rows": []}


def fetch(cur):
    return cur.fetchall() if cur.description else []


def run(dsn, mode, sqls):
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mode == "pipeline":
            cur = conn.cursor()
            with conn.pipeline() as p:
                for sql in sqls:
                    try:
                        cur.execute(sql)
                        p.sync()
                        out.append(outcome(sql, lambda: fetch(cur)))
                    except psycopg.Error as e:
                        out.append({"sql": sql, "ok": False, "sqlstate": e.sqlstate,
                                    "message": str(e), "rows": []})
            return out
        for sql in sqls:
            if mode == "client":
                cur = psycopg.ClientCursor(conn)
                out.append(outcome(sql, lambda: (cur.execute(sql), fetch(cur))[1]))
            elif mode == "binary":
                cur = conn.cursor(binary=True)
                out.append(outcome(sql, lambda: (cur.execute(sql), fetch(cur))[1]))
            elif mode == "prepared":
                cur = conn.cursor()
                # Twice: the second run executes the named statement prepared
                # by the first (prepare=True forces it at once).
                out.append(outcome(sql, lambda: (cur.execute(sql, prepare=True), fetch(cur))[1]))
                out.append(outcome(sql, lambda: (cur.execute(sql, prepare=True), fetch(cur))[1]))
            else:
                cur = conn.cursor()
                out.append(outcome(sql, lambda: (cur.execute(sql), fetch(cur))[1]))
            # The session must still work after whatever happened.
            out.append(outcome("SELECT 1", lambda: conn.execute("SELECT 1").fetchall()))
    return out


def txn(dsn):
    steps = []
    with psycopg.connect(dsn) as conn:  # not autocommit: BEGIN is implicit
        steps.append(outcome("INSERT", lambda: (conn.execute(
            "INSERT INTO users (id, name) VALUES (99, 'txn-probe')"), [])[1]))
        steps.append(outcome("DENIED", lambda: conn.execute("DROP TABLE users").fetchall()))
        steps.append(outcome("AFTER", lambda: conn.execute("SELECT 1").fetchall()))
        steps.append({"sql": "STATUS", "ok": True, "sqlstate": None,
                      "message": conn.info.transaction_status.name, "rows": []})
        conn.rollback()
        steps.append(outcome("ROLLED BACK", lambda: conn.execute(
            "SELECT count(*) FROM users WHERE id = 99").fetchall()))
        conn.rollback()
    return steps


def cancel(dsn, safe=False):
    cancel_error = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid

        def later():
            # Cancel once the server is running the query (a cancel that
            # arrives before it is lost), seen from a second session.
            with psycopg.connect(dsn, autocommit=True) as watcher:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    row = watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s "
                        "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
                        (pid,)).fetchone()
                    if row[0]:
                        break
                    time.sleep(0.02)
            try:
                # cancel_safe(): libpq 17+'s PQcancelCreate, encrypted like
                # the session (sslmode), which reports a TLS leg that ends
                # without close_notify; cancel(): the classic PQcancel.
                conn.cancel_safe() if safe else conn.cancel()
            except Exception as e:  # reported, not raised in the thread
                cancel_error.append(str(e))
        threading.Thread(target=later, daemon=True).start()
        start = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            state = None
        except psycopg.Error as e:
            state = e.sqlstate
        return {"sqlstate": state, "seconds": time.monotonic() - start,
                "after": conn.execute("SELECT 1").fetchone()[0],
                "cancel_error": cancel_error[0] if cancel_error else None}


def info(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), "
            "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())").fetchone()
        return {"user": row[0], "db": row[1], "ssl": row[2]}


def main():
    scenario, dsn = sys.argv[1], sys.argv[2]
    if scenario == "run":
        result = run(dsn, sys.argv[3], sys.argv[4:])
    elif scenario == "txn":
        result = txn(dsn)
    elif scenario == "cancel":
        result = cancel(dsn)
    elif scenario == "cancel_safe":
        result = cancel(dsn, safe=True)
    elif scenario == "info":
        result = info(dsn)
    else:
        sys.exit(f"unknown scenario {scenario}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
