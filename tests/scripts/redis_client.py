#!/usr/bin/env python3
"""redis-py driver for tests/tests/redis.rs.

usage: redis_client.py SCENARIO HOST PORT [--password P] [--tls CA] [--resp 2|3]

Prints one JSON object. Scenarios:
  basic     reads of masked and unmasked keys, denied commands
  pipeline  1,000 mixed commands in one pipeline, FLUSHALL denied in the middle;
            every reply checked in order
  multi     MULTI with a denied command: EXECABORT and nothing applied
  pubsub    subscribe, publish from a second connection, receive
"""

import json
import sys
import time

import redis


def connect(args):
    kw = dict(host=args["host"], port=args["port"], socket_timeout=15, decode_responses=True)
    if args.get("password"):
        kw["password"] = args["password"]
    if args.get("tls"):
        kw["ssl"] = True
        kw["ssl_ca_certs"] = args["tls"]
    if args.get("resp") == "3":
        kw["protocol"] = 3
    return redis.Redis(**kw)


def err(f):
    try:
        return {"ok": f()}
    except Exception as e:  # noqa: BLE001
        return {"error": "%s: %s" % (type(e).__name__, e)}


def basic(r):
    out = {}
    out["ping"] = r.ping()
    out["get_secret"] = r.get("secret:db")
    out["get_public"] = r.get("public:greeting")
    out["get_leak"] = r.get("public:leak")
    out["hgetall"] = r.hgetall("secret:creds")
    out["mget"] = r.mget("secret:db", "public:greeting", "secret:api", "missing")
    out["lrange"] = r.lrange("public:list", 0, -1)
    out["flushall"] = err(lambda: r.flushall())
    out["config_set"] = err(lambda: r.config_set("maxmemory", "1gb"))
    out["dump"] = err(lambda: r.dump("secret:db"))
    out["after"] = r.get("public:greeting")
    return out


def pipeline(r):
    r.delete("pipe:counter", "pipe:list")
    p = r.pipeline(transaction=False)
    expected = []
    for i in range(1000):
        if i == 503:
            p.flushall()
            expected.append(("error", "no-dangerous-redis-commands"))
            continue
        k = i % 4
        if k == 0:
            p.set("pipe:k%d" % i, "v%d" % i)
            expected.append(("eq", True))
        elif k == 1:
            p.get("pipe:k%d" % (i - 1))
            expected.append(("eq", "v%d" % (i - 1)))
        elif k == 2:
            p.incr("pipe:counter")
            expected.append(("eq", i // 4 + 1))
        else:
            p.get("secret:db")
            expected.append(("eq", "********"))
    replies = p.execute(raise_on_error=False)
    problems = []
    if len(replies) != len(expected):
        problems.append("got %d replies for %d commands" % (len(replies), len(expected)))
    for i, (reply, (kind, want)) in enumerate(zip(replies, expected)):
        if kind == "eq" and reply != want:
            problems.append("reply %d: %r != %r" % (i, reply, want))
        if kind == "error" and not (isinstance(reply, Exception) and want in str(reply)):
            problems.append("reply %d: expected an error naming %s, got %r" % (i, want, reply))
    # The connection is still in step afterwards.
    after = r.get("pipe:k0")
    if after != "v0":
        problems.append("after the pipeline: %r" % after)
    return {"replies": len(replies), "problems": problems[:20], "denied": str(replies[503])}


def multi(r):
    r.delete("txn:a", "txn:b")
    p = r.pipeline(transaction=True)
    p.set("txn:a", "1")
    p.flushall()
    p.set("txn:b", "2")
    out = {}
    try:
        out["exec"] = p.execute()
    except Exception as e:  # noqa: BLE001
        out["error"] = "%s: %s" % (type(e).__name__, e)
    out["a"] = r.get("txn:a")
    out["b"] = r.get("txn:b")
    # A clean transaction works, with masked values inside EXEC's reply.
    p = r.pipeline(transaction=True)
    p.set("txn:c", "3")
    p.get("secret:db")
    p.get("txn:c")
    out["clean"] = p.execute()
    return out


def pubsub(args):
    sub = connect(args)
    pub = connect(args)
    ps = sub.pubsub()
    ps.subscribe("chan:a", "chan:b")
    ps.psubscribe("pat:*")
    got = []
    deadline = time.time() + 30
    confirmations = 0
    while confirmations < 3 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] in ("subscribe", "psubscribe"):
            confirmations += 1
    receivers = pub.publish("chan:a", "one")
    pub.publish("pat:x", "two")
    pub.publish("chan:b", "leak AKIAQRSTUVWXYZ234567")
    while len(got) < 3 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] in ("message", "pmessage"):
            got.append(m["data"])
    ps.unsubscribe()
    ps.punsubscribe()
    # Back to normal commands on the same connection, once the three
    # unsubscriptions are confirmed.
    left = 0
    while left < 3 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] in ("unsubscribe", "punsubscribe"):
            left += 1
    ps.close()
    after = sub.get("public:greeting")
    return {"confirmations": confirmations, "receivers": receivers, "messages": got, "after": after}


def main():
    argv = sys.argv[1:]
    scenario, host, port = argv[0], argv[1], int(argv[2])
    args = {"host": host, "port": port}
    i = 3
    while i < len(argv):
        args[argv[i].lstrip("-")] = argv[i + 1]
        i += 2
    if scenario == "pubsub":
        out = pubsub(args)
    else:
        r = connect(args)
        out = {"basic": basic, "pipeline": pipeline, "multi": multi}[scenario](r)
    print(json.dumps(out, default=repr))


if __name__ == "__main__":
    main()
