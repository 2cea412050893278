#!/usr/bin/env python3
"""A client that knows nothing of interceptor: connect, read the server's
banner (the peer address the server saw), echo a payload, report as JSON.

Used by the integration tests through `interceptor exec`.
"""
import argparse
import hashlib
import json
import os
import socket
import sys
import threading


def one(host, port, family, size, seed):
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    out = {"pid": os.getpid(), "uid": os.getuid(),
           "exe": os.path.realpath("/proc/self/exe")}
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect((host, port))
    except OSError as e:
        out["error"] = e.errno
        out["error_name"] = type(e).__name__
        return out
    out["sockname"] = list(s.getsockname()[:2])
    out["peername"] = list(s.getpeername()[:2])
    banner = b""
    while not banner.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        banner += chunk
    out["server_saw"] = banner.decode().strip()
    payload = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    payload = payload[:size]
    received = bytearray()

    def reader():
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            received.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)  # half-close: the server echoes, then closes
    t.join()
    s.close()
    out["sent"] = len(payload)
    out["received"] = len(received)
    out["exact"] = bytes(received) == payload
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--family", type=int, default=4)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--conns", type=int, default=1)
    # Ignored: lets tests put recognisable text (fake secrets) in argv.
    p.add_argument("--label", action="append", default=[])
    a = p.parse_args()
    results = [None] * a.conns

    def run(i):
        results[i] = one(a.host, a.port, a.family, a.size, i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        print(json.dumps(r))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
