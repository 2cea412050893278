"""pytest plugin of `cargo xtask peer-suites` for redis-py's suite under
the default policy.

redis-py's tests clean up after themselves with FLUSHDB, which the default
policy denies (@dangerous): each test then reports that denial, and the
next test would start on the keys, locks and subscriptions the previous
one left, failing on that state rather than on anything of its own. After
each test's teardown this plugin empties the server itself, over the
server's unix socket (INTERCEPTOR_PEER_RESET_SOCKET), and ends the
subscriber connections left open, over a socket the
interceptor does not redirect (it redirects TCP connects), so the suite's
own denied FLUSHDB is still counted and nothing cascades from it.
"""

import os
import socket

import pytest


def _flushall(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rb")
        # Subscribers whose test could not close them (its teardown stopped
        # at the denied FLUSHDB) would be counted by the next test's
        # PUBSUB NUMSUB and receive its messages: end them too.
        s.sendall(b"FLUSHALL\r\nCLIENT KILL TYPE pubsub\r\n")
        flushed = f.readline()
        f.readline()
    if not flushed.startswith(b"+OK"):
        raise RuntimeError(f"FLUSHALL over {path} answered {flushed!r}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    path = os.environ.get("INTERCEPTOR_PEER_RESET_SOCKET")
    if path:
        _flushall(path)
