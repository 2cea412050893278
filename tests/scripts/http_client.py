"""HTTP clients for tests/tests/http.rs, run inside the intercepted cgroup.

Each scenario prints one JSON object on stdout.

  hvac URL TOKEN PATH [CACERT]     hvac reads the KV v2 secret at PATH
  hvac_unwrap URL WRAPTOKEN AUTH [CACERT]
                                   hvac unwraps a response-wrapping token, the
                                   two ways Vault allows: AUTH "-" sends the
                                   wrapping token as the client token
                                   (X-Vault-Token, no body); otherwise AUTH is
                                   the client token and the wrapping token
                                   goes in the body ({"token": ...})
  approle URL ROLE_ID SECRET_ID_FILE [CACERT]
                                   hvac logs in with AppRole, then reads the
                                   KV v2 secret at app with the token it got
  raw HOST PORT KIND               a malformed request of KIND; what came back
  slowloris HOST PORT              a request head trickled one header line every
                                   5 s; when and how the proxy ended it
  keepalive HOST PORT TOKEN PATH N SECONDS
                                   N requests on ONE connection over SECONDS
  gated HOST PORT TOKEN GATE READY on one connection: GET a secret, create the
                                   file READY, wait for the file GATE, then
                                   write the secret 20 times
"""

import json
import os
import socket
import sys
import time


def hvac_client(url, token, cacert):
    import hvac

    # hvac falls back to VAULT_TOKEN and ~/.vault-token when it is given no
    # token: always give one, so that nothing on the machine takes part.
    if not token:
        raise SystemExit("hvac_client needs a token")
    verify = cacert if cacert else True
    return hvac.Client(url=url, token=token, verify=verify)


def scenario_hvac(url, token, path, cacert=None):
    c = hvac_client(url, token, cacert)
    r = c.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    print(json.dumps(r))


def scenario_hvac_unwrap(url, wrap_token, auth, cacert=None):
    if auth == "-":
        r = hvac_client(url, wrap_token, cacert).sys.unwrap()
    else:
        r = hvac_client(url, auth, cacert).sys.unwrap(token=wrap_token)
    print(json.dumps(r))


def scenario_approle(url, role_id, secret_id_file, cacert=None):
    """AppRole login as a CI job does it (the secret id from a file, not
    the command line), then the token it got is used."""
    import hvac

    with open(secret_id_file) as f:
        secret_id = f.read().strip()
    c = hvac.Client(url=url, verify=cacert if cacert else True)
    login = c.auth.approle.login(role_id=role_id, secret_id=secret_id)
    token = login["auth"]["client_token"]
    c.token = token
    read = c.secrets.kv.v2.read_secret_version(path="app", mount_point="secret", raise_on_deleted_version=True)
    print(json.dumps({"token": token, "read": read}))


def malformed(kind):
    if kind == "random":
        return os.urandom(4096)
    if kind == "truncated":
        return b"GET /v1/secret/data/app HTTP/1.1\r\nHost: x\r\nX-Vault-To"
    if kind == "header_flood":
        head = b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n"
        head += b"".join(b"X-Flood-%d: %s\r\n" % (i, b"a" * 100) for i in range(2000))
        return head + b"\r\n"
    if kind == "giant_content_length":
        return (
            b"POST /v1/secret/data/app HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 99999999999999999\r\n\r\n{\"data\":"
        )
    if kind == "bad_content_length":
        return b"POST /v1/secret/data/app HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n"
    if kind == "h2_preface":
        return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    if kind.startswith("path:"):
        return b"GET %s HTTP/1.1\r\nHost: x\r\nX-Vault-Token: root\r\nConnection: close\r\n\r\n" % kind[5:].encode()
    raise SystemExit("unknown kind " + kind)


def scenario_raw(host, port, kind):
    s = socket.create_connection((host, int(port)), timeout=10)
    data = malformed(kind)
    try:
        s.sendall(data)
        if kind == "truncated":
            s.shutdown(socket.SHUT_WR)
    except OSError as e:
        print(json.dumps({"send_error": str(e), "response": ""}))
        return
    out = b""
    closed = False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except socket.timeout:
        pass
    except OSError as e:
        closed = True
        out += ("<%s>" % e).encode()
    print(json.dumps({"response": out.decode("latin-1"), "closed": closed}))


def scenario_slowloris(host, port):
    s = socket.create_connection((host, int(port)), timeout=90)
    start = time.time()
    s.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n")
    s.settimeout(5)
    out = b""
    closed = False
    i = 0
    while time.time() - start < 80:
        try:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
        except socket.timeout:
            try:
                s.sendall(b"X-Slow-%d: a\r\n" % i)
                i += 1
            except OSError:
                closed = True
                break
        except OSError:
            closed = True
            break
    print(json.dumps({"closed": closed, "after": time.time() - start, "response": out.decode("latin-1")}))


def scenario_keepalive(host, port, token, path, n, seconds):
    import http.client

    n, seconds = int(n), float(seconds)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    results = []
    for i in range(n):
        conn.request("GET", path, headers={"X-Vault-Token": token})
        r = conn.getresponse()
        body = r.read()
        results.append({"status": r.status, "body": json.loads(body)})
        time.sleep(seconds / n)
    sock = conn.sock
    print(json.dumps({"results": results, "same_connection": sock is not None}))


def scenario_gated(host, port, token, gate, ready):
    import http.client

    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    results = []

    def call(method, path, body=None):
        headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        results.append({"status": r.status, "body": r.read().decode("utf-8", "replace")})

    call("GET", "/v1/secret/data/app")
    with open(ready, "w"):
        pass
    deadline = time.time() + 60
    while not os.path.exists(gate):
        if time.time() > deadline:
            sys.exit("gated: %s did not appear within 60 s" % gate)
        time.sleep(0.02)
    for _ in range(20):
        call("POST", "/v1/secret/data/app", json.dumps({"data": {"password": "overwritten"}}))
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    globals()["scenario_" + name](*args)
