"""Redis, job-queue and Vault clients of the conformance suite
(tests/tests/conformance_kv.rs).

Each subcommand runs a list of cases with a real tool or library and prints
one line per case, `CASE <name>\t<result>`: what it returned as sorted JSON,
or `ERROR <class>: <message>`. A case that fails does not stop the next one.
The test runs each subcommand once directly and once inside the intercepted
cgroup, against the same server reset to the same state in between; what
differs between any two calls (request ids, timestamps, fresh tokens) is
left out or replaced by a placeholder, so that the rest compares as it is.

Secrets come from the environment, never the command line (command lines are
recorded): REDISCLI_AUTH (the Redis password, read by redis-cli itself and
here for redis-py and rq), BAO_TOKEN / VAULT_TOKEN (the job's Vault token),
BAO_BIN (the bao binary).

    python3 conformance_kv.py redis-cli HOST PORT
    python3 conformance_kv.py redis-py HOST PORT
    python3 conformance_kv.py rq HOST PORT
    python3 conformance_kv.py bao URL ROLE_ID SECRET_ID_FILE
    python3 conformance_kv.py hvac URL ROLE_ID SECRET_ID_FILE

`add` is also the job function rq's worker imports from this module
(`rq worker --path tests/scripts`).
"""

import json
import os
import subprocess
import sys
import time


def add(a, b):
    """The rq job: run by the worker, in its work horse."""
    return a + b


def out(name, result):
    print(f"CASE {name}\t{result}", flush=True)


def one_line(s):
    return " ".join(str(s).split())


def case(name, fn):
    try:
        result = fn()
        out(name, json.dumps(result, sort_keys=True, default=str))
    except Exception as e:  # the error is the case's result
        out(name, f"ERROR {type(e).__name__}: {one_line(e)}")


class CommandFailed(Exception):
    """A command-line tool exited non-zero or printed an error reply."""


def run(argv, env=None, stdin=None):
    """Runs a tool; its stdout, or CommandFailed with its exit status and
    the last line of its output (where CLIs print the error)."""
    p = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=120)
    stdout = p.stdout.decode("utf-8", "replace")
    stderr = p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        text = (stderr.strip() or stdout.strip()).splitlines()
        raise CommandFailed(f"exit {p.returncode}: {text[-1] if text else ''}")
    return stdout


def wait_until(what, probe, seconds=15.0):
    """Polls `probe` until it returns something other than None."""
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {seconds:.0f} s")


# --- redis-cli -------------------------------------------------------------


def redis_cli_cases(host, port):
    def cli(*args, stdin=None):
        stdout = run(["redis-cli", "-h", host, "-p", port, *args], stdin=stdin)
        lines = stdout.splitlines()
        # Without a tty redis-cli prints an error reply as it is, and may
        # still exit 0.
        if lines and (lines[0].startswith("ERR") or lines[0].startswith("(error)")):
            raise CommandFailed(one_line(stdout))
        return lines

    def pipe():
        def resp(*words):
            parts = [f"*{len(words)}\r\n"]
            for w in words:
                parts.append(f"${len(w.encode())}\r\n{w}\r\n")
            return "".join(parts)

        cmds = []
        for i in range(200):
            cmds.append(resp("SET", f"conf:pipe:{i}", f"value-{i}"))
            cmds.append(resp("INCR", "conf:pipe:count"))
        return cli("--pipe", stdin="".join(cmds).encode())

    def read_back():
        keys = [f"conf:pipe:{i}" for i in range(200)]
        values = cli("MGET", *keys)
        return {
            "count": cli("GET", "conf:pipe:count"),
            "values_as_written": values == [f"value-{i}" for i in range(200)],
            "first_and_last": [values[0], values[-1]] if values else [],
        }

    case("GET public:greeting", lambda: cli("GET", "public:greeting"))
    case("LRANGE public:list 0 -1", lambda: cli("LRANGE", "public:list", "0", "-1"))
    case("GET secret:db", lambda: cli("GET", "secret:db"))
    case("MGET public:greeting secret:api", lambda: cli("MGET", "public:greeting", "secret:api"))
    # The order of SCAN is the hash table's: sorted, to compare sets.
    case("--scan --pattern 'public:*'", lambda: sorted(cli("--scan", "--pattern", "public:*")))
    case("--pipe of 200 SET and 200 INCR", pipe)
    case("MGET and GET of what --pipe wrote", read_back)
    case("KEYS 'public:*'", lambda: sorted(cli("KEYS", "public:*")))
    # Last: direct, it empties the server.
    case("FLUSHALL", lambda: cli("FLUSHALL"))


# --- redis-py --------------------------------------------------------------


def redis_py_cases(host, port):
    import redis

    password = os.environ.get("REDISCLI_AUTH") or None

    def connect(**kw):
        return redis.Redis(host=host, port=int(port), password=password, decode_responses=True, **kw)

    r = connect()

    def pipeline(transaction):
        def go():
            p = r.pipeline(transaction=transaction)
            p.set("conf:p:a", "1")
            p.incr("conf:p:n")
            p.incrby("conf:p:n", 5)
            p.get("conf:p:a")
            p.lrange("public:list", 0, -1)
            p.get("public:greeting")
            return p.execute()

        return go

    def transaction_masked():
        p = r.pipeline(transaction=True)
        p.get("public:greeting")
        p.get("secret:db")
        p.hget("secret:creds", "user")
        return p.execute()

    def watch_ok():
        r.set("conf:w", "10")
        with r.pipeline() as p:
            p.watch("conf:w")
            v = int(p.get("conf:w"))
            p.multi()
            p.set("conf:w", str(v + 1))
            res = p.execute()
        return {"exec": res, "value": r.get("conf:w")}

    def watch_conflict():
        r.set("conf:w2", "1")
        other = connect()
        with r.pipeline() as p:
            p.watch("conf:w2")
            v = int(p.get("conf:w2"))
            other.set("conf:w2", "100")  # another client changes the key
            p.multi()
            p.set("conf:w2", str(v + 1))
            try:
                got = p.execute()
            except redis.WatchError as e:
                got = f"WatchError: {e}"
        other.close()
        return {"exec": got, "value": r.get("conf:w2")}

    def transaction_helper():
        r.set("conf:t", "5")
        other = connect()
        calls = []

        def body(pipe):
            calls.append(1)
            v = int(pipe.get("conf:t"))
            if len(calls) == 1:
                other.set("conf:t", "50")  # the first attempt conflicts
            pipe.multi()
            pipe.set("conf:t", str(v * 2))

        res = r.transaction(body, "conf:t")
        other.close()
        return {"exec": res, "attempts": len(calls), "value": r.get("conf:t")}

    def next_message(p):
        return wait_until("pub/sub message", lambda: p.get_message(timeout=0.5))

    def pubsub():
        sub = connect().pubsub()
        sub.subscribe("conf:chan")
        got = [next_message(sub)]  # the subscription is confirmed
        n = r.publish("conf:chan", "hello")
        got.append(next_message(sub))
        sub.unsubscribe("conf:chan")
        got.append(next_message(sub))
        sub.close()
        return {"receivers": n, "messages": got}

    def psubscribe():
        sub = connect().pubsub()
        sub.psubscribe("conf:ev:*")
        got = [next_message(sub)]
        n = r.publish("conf:ev:one", "payload")
        got.append(next_message(sub))
        sub.punsubscribe()
        got.append(next_message(sub))
        sub.close()
        return {"receivers": n, "messages": got}

    lock = r.lock("conf:lock", timeout=60)

    def lock_acquire():
        return {
            "acquired": lock.acquire(blocking=False),
            "locked": lock.locked(),
            "owned": lock.owned(),
        }

    def lock_release():
        lock.release()
        return {"locked_after": lock.locked()}

    r3 = connect(protocol=3)

    case("pipeline(transaction=False)", pipeline(False))
    case("pipeline(transaction=True)", pipeline(True))
    case("pipeline(transaction=True) reading masked keys", transaction_masked)
    case("WATCH, MULTI, EXEC", watch_ok)
    case("WATCH, key changed by another client, EXEC: WatchError", watch_conflict)
    case("transaction() retrying after a WatchError", transaction_helper)
    case("pubsub: subscribe, publish, get_message", pubsub)
    case("pubsub: psubscribe, publish, get_message", psubscribe)
    case("scan_iter(match='public:*')", lambda: sorted(r.scan_iter(match="public:*")))
    case("Lock.acquire", lock_acquire)
    case("Lock.release", lock_release)
    case("RESP3 GET public:greeting", lambda: r3.get("public:greeting"))
    case("RESP3 LRANGE public:list", lambda: r3.lrange("public:list", 0, -1))
    case("RESP3 HGETALL secret:creds", lambda: r3.hgetall("secret:creds"))
    case("RESP3 GET secret:db", lambda: r3.get("secret:db"))
    case("INFO server: redis_version", lambda: r.info("server")["redis_version"])
    r3.close()
    r.close()


# --- rq --------------------------------------------------------------------


def rq_cases(host, port):
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    password = os.environ.get("REDISCLI_AUTH") or None
    r = Redis(host=host, port=int(port), password=password)
    here = os.path.dirname(os.path.abspath(__file__))
    auth = f":{password}@" if password else ""
    env = dict(os.environ)
    # The worker reads its URL (and so the password) from the environment.
    env["RQ_REDIS_URL"] = f"redis://{auth}{host}:{port}/0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def enqueue(queue, job_id, a, b):
        def go():
            q = Queue(queue, connection=r)
            job = q.enqueue("conformance_kv.add", a, b, job_id=job_id)
            return {
                "status": job.get_status(),
                "func_name": job.func_name,
                "args": list(job.args),
                "queued": len(q),
            }

        return go

    def worker(queue, job_id, *extra):
        def go():
            argv = ["rq", "worker", "--burst", "--path", here, *extra, queue]
            p = subprocess.run(argv, capture_output=True, env=env, timeout=120)
            text = (p.stdout + p.stderr).decode("utf-8", "replace")
            if p.returncode != 0:
                lines = [line for line in text.splitlines() if line.strip()]
                raise CommandFailed(f"exit {p.returncode}: {lines[-1] if lines else ''}")
            # The worker's log has timestamps, its name and pid: only what
            # it says about the job is compared.
            return {"exit": p.returncode, "job_ok": f"Job OK ({job_id})" in text}

        return go

    def result(queue, job_id):
        def go():
            job = Job.fetch(job_id, connection=r)
            return {
                "status": job.get_status(),
                "return_value": job.return_value(),
                "queued": len(Queue(queue, connection=r)),
            }

        return go

    case("enqueue add(2, 3)", enqueue("conf", "conf-add", 2, 3))
    case("rq worker --burst", worker("conf", "conf-add"))
    case("Job.fetch, get_status, return_value", result("conf", "conf-add"))
    case("enqueue add(4, 5) for a worker with the scheduler", enqueue("conf-s", "conf-add-s", 4, 5))
    # The scheduler takes its lock with a Lua script (EVALSHA).
    case("rq worker --burst --with-scheduler", worker("conf-s", "conf-add-s", "--with-scheduler"))
    r.close()


# --- Vault / OpenBao -------------------------------------------------------

# Differ between any two calls: replaced by this placeholder (a masked
# value is kept as it came, so that masking shows).
VARIES = "<varies>"
MASKED = "********"


def stable(v, keys=("request_id", "created_time", "updated_time")):
    """`v` with the values of `keys` (at any depth) replaced by VARIES."""
    if isinstance(v, dict):
        return {
            k: (VARIES if k in keys and isinstance(x, str) and x and MASKED not in x else stable(x, keys))
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [stable(x, keys) for x in v]
    return v


def token_lookup_subset(v, own_token):
    """What a token lookup says that does not change from call to call (not
    ttl, issue or creation times, accessor)."""
    d = v["data"]
    keep = ["display_name", "entity_id", "explicit_max_ttl", "meta", "num_uses", "orphan",
            "path", "policies", "renewable", "type"]
    got = {k: d.get(k) for k in keep}
    got["id_is_own_token"] = d.get("id") == own_token
    return got


def login_shape(v):
    """An AppRole login answer without what a new login changes: the token
    and its accessor become `<a token>` (unless masked), request ids go."""
    a = dict(v["auth"])
    for k in ("client_token", "accessor"):
        t = a.get(k)
        if isinstance(t, str) and t and MASKED not in t:
            a[k] = "<a token>"
    return stable({"auth": a, "data": v.get("data"), "lease_duration": v.get("lease_duration"),
                   "warnings": v.get("warnings")})


def health_subset(v):
    keep = ["initialized", "sealed", "standby", "performance_standby", "version", "cluster_name",
            "cluster_id", "replication_dr_mode", "replication_performance_mode"]
    return {k: v.get(k) for k in keep}


# The secret the cases write and read; the test seeds conf/app with it too.
SECRET = {"password": "conf-vault-pw-7Hq2x", "api_key": "conf-api-key-81ce93", "username": "conf-svc-user"}


def bao_cases(url, role_id, secret_id_file):
    bao = os.environ["BAO_BIN"]
    own = os.environ["BAO_TOKEN"]
    env = dict(os.environ, BAO_ADDR=url)

    def cli(*args, token=None):
        e = env if token is None else dict(env, BAO_TOKEN=token)
        return json.loads(run([bao, *args], env=e))

    login_token = {}

    def login():
        v = cli("write", "-format=json", "auth/approle/login", f"role_id={role_id}",
                f"secret_id=@{secret_id_file}", token="")
        login_token["t"] = v["auth"]["client_token"]
        return login_shape(v)

    def read_with_login():
        return stable(cli("kv", "get", "-format=json", "secret/conf/app", token=login_token["t"]))

    def token_create():
        a = cli("token", "create", "-format=json", "-policy=default", "-ttl=5m")["auth"]
        return {k: a.get(k) for k in ("policies", "token_type", "renewable", "orphan")}

    def secrets_list():
        v = cli("secrets", "list", "-format=json")
        return sorted(f"{k} {m['type']}" for k, m in v.items())

    def secrets_enable():
        run([bao, "secrets", "enable", "-path=conf-bao", "kv"], env=env)
        return "enabled"

    kv = [f"{k}={v}" for k, v in sorted(SECRET.items())]
    case("kv put", lambda: stable(cli("kv", "put", "-format=json", "secret/conf/written", *kv)))
    case("kv get", lambda: stable(cli("kv", "get", "-format=json", "secret/conf/written")))
    case("kv metadata get", lambda: stable(cli("kv", "metadata", "get", "-format=json", "secret/conf/written")))
    case("token lookup", lambda: token_lookup_subset(cli("token", "lookup", "-format=json"), own))
    case("write auth/approle/login", login)
    case("kv get with the AppRole token", read_with_login)
    case("token create", token_create)
    case("secrets list", secrets_list)
    case("secrets enable", secrets_enable)
    case("status", lambda: cli("status", "-format=json"))
    # GET /v1/sys/init: exit 0 when the server is initialized.
    case("operator init -status", lambda: run([bao, "operator", "init", "-status"], env=env).strip())


def hvac_cases(url, role_id, secret_id_file):
    import hvac

    own = os.environ["VAULT_TOKEN"]
    # Always a token given: hvac must not fall back to ~/.vault-token.
    c = hvac.Client(url=url, token=own)

    def login():
        with open(secret_id_file) as f:
            secret_id = f.read().strip()
        # A client of its own, as a job that logs in has: the login's token
        # replaces the one it starts with (VAULT_TOKEN).
        job = hvac.Client(url=url)
        v = job.auth.approle.login(role_id=role_id, secret_id=secret_id)
        shape = login_shape(v)
        read = job.secrets.kv.v2.read_secret_version(
            path="conf/app", mount_point="secret", raise_on_deleted_version=True
        )
        return shape, stable(read)

    got = {}

    def login_case():
        got["login"] = login()
        return got["login"][0]

    def read_case():
        if "login" not in got:
            raise RuntimeError("no login")
        return got["login"][1]

    def token_create():
        a = c.auth.token.create(policies=["default"], ttl="5m")["auth"]
        return {k: a.get(k) for k in ("policies", "token_type", "renewable", "orphan")}

    def mounts():
        v = c.sys.list_mounted_secrets_engines()
        return sorted(f"{k} {m['type']}" for k, m in v["data"].items())

    def enable():
        c.sys.enable_secrets_engine("kv", path="conf-hvac")
        return "enabled"

    kv2 = c.secrets.kv.v2
    case("kv.v2.create_or_update_secret",
         lambda: stable(kv2.create_or_update_secret(path="conf/written", secret=SECRET, mount_point="secret")))
    case("kv.v2.read_secret_version",
         lambda: stable(kv2.read_secret_version(path="conf/written", mount_point="secret",
                                                raise_on_deleted_version=True)))
    case("kv.v2.read_secret_metadata",
         lambda: stable(kv2.read_secret_metadata(path="conf/written", mount_point="secret")))
    case("auth.token.lookup_self", lambda: token_lookup_subset(c.auth.token.lookup_self(), own))
    case("auth.approle.login", login_case)
    case("read_secret_version with the AppRole token", read_case)
    case("auth.token.create", token_create)
    case("sys.list_mounted_secrets_engines", mounts)
    case("sys.enable_secrets_engine", enable)
    case("sys.read_health_status", lambda: health_subset(c.sys.read_health_status(method="GET")))
    case("sys.is_sealed", lambda: c.sys.is_sealed())
    case("sys.is_initialized", lambda: c.sys.is_initialized())


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    args = sys.argv[2:]
    if cmd == "redis-cli" and len(args) == 2:
        redis_cli_cases(*args)
    elif cmd == "redis-py" and len(args) == 2:
        redis_py_cases(*args)
    elif cmd == "rq" and len(args) == 2:
        rq_cases(*args)
    elif cmd == "bao" and len(args) == 3:
        bao_cases(*args)
    elif cmd == "hvac" and len(args) == 3:
        hvac_cases(*args)
    else:
        sys.exit(f"usage: {sys.argv[0]} redis-cli|redis-py|rq HOST PORT | bao|hvac URL ROLE_ID SECRET_ID_FILE")


if __name__ == "__main__":
    main()
