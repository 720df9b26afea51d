"""Ports of the local stack's services: on 127.0.0.1, below the kernel's ephemeral range,
and kept from one `up` to the next so that the stack's URLs (and its env file) survive a
restart."""

from __future__ import annotations

import errno
import random
import socket
import sys
import time
from collections.abc import Collection
from pathlib import Path

from components.stack_procs import StackError

HOST = "127.0.0.1"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers bind with SO_REUSEADDR: do the same, or a port in TIME_WAIT after `down`
        # would look taken and a restart would move the stack to new URLs.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


# Ports are drawn below the kernel's ephemeral range (where it picks the source port of
# every outgoing connection, and port 0 binds) and above Ray's worker ports (10002-19999):
# a port the stack used stays free between `down` and the next `up`, so its URLs, and
# the env file, survive a restart.
PORT_RANGE = (20000, 32000)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(exclude: Collection[int] = ()) -> int:
    """A free port from PORT_RANGE (below the ephemeral range); `exclude` holds ports
    already handed out in this call."""
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], _ephemeral_low() - 1)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        if port not in exclude and port_free(port):
            return port
    while True:  # a crowded range: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port


# How long `up` waits for the port a service last had. A service that was just killed
# (or crashed) may hold its listening socket for a moment while the kernel tears the
# process down; waiting keeps its URL, and the env file that names it, valid.
PREVIOUS_PORT_WAIT_S = 10.0


def choose_port(
    name: str,
    requested: int | None,
    previous: int | None,
    exclude: Collection[int],
    wait_s: float = PREVIOUS_PORT_WAIT_S,
) -> int:
    """An explicit port must be free; else the port of the last run once free (waiting up
    to `wait_s` for it); else any free port, with a note on stderr that the URL moved."""
    if requested:
        if requested in exclude or not port_free(requested):
            raise StackError(f"{name}: port {requested} on {HOST} is already in use")
        return requested
    if previous and previous not in exclude:
        deadline = time.monotonic() + wait_s
        while True:
            if port_free(previous):
                return previous
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    port = free_port(exclude)
    if previous:
        print(
            f"{name}: its last port {previous} on {HOST} is taken; it moves to {port}",
            file=sys.stderr,
        )
    return port
