#!/usr/bin/env python3
"""Opens sessions in a loop until the file STOP exists: each sends its own
client address as a token, waits for "ok", closes. After every session the
counts so far are written to the file PROGRESS (atomically, as JSON), so the
test can wait for the loop to have made progress; at the end they are
printed as JSON.

Usage: token_loop.py PORT STOP PROGRESS"""
import json
import os
import socket
import sys
import time

port = int(sys.argv[1])
stop, progress = sys.argv[2], sys.argv[3]
# Only a safety net for a test that died without creating STOP.
give_up = time.time() + 300
ok = failed = 0


def report():
    tmp = progress + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"ok": ok, "failed": failed}, f)
    os.replace(tmp, progress)


report()
while not os.path.exists(stop):
    if time.time() > give_up:
        sys.exit("token_loop: %s never appeared" % stop)
    s = socket.socket()
    try:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        me = "%s:%d" % s.getsockname()
        s.sendall((me + "\n").encode())
        if s.recv(16).startswith(b"ok"):
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    finally:
        s.close()
    report()
    time.sleep(0.002)
print(json.dumps({"ok": ok, "failed": failed}))
