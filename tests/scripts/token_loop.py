#!/usr/bin/env python3
"""Opens sessions in a loop for a while: each sends its own client address
as a token, waits for "ok", closes. Prints counts as JSON."""
import json
import socket
import sys
import time

port = int(sys.argv[1])
end = time.time() + float(sys.argv[2])
ok = failed = 0
while time.time() < end:
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
    time.sleep(0.002)
print(json.dumps({"ok": ok, "failed": failed}))
