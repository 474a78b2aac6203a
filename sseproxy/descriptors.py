"""The process's descriptors, set up once at start: the open-file limit, and the kernel's table of
descriptors sized for it.

Linux doubles a process's descriptor table when a new descriptor does not fit in it (at 64, 128,
256, and so on: a process starts with 64, or with its parent's size). In a process with more than
one thread (uvloop's libuv workers are four), each doubling first waits for an RCU grace period
(``synchronize_rcu`` in ``expand_fdtable``): measured here, the ``socket()`` that made descriptor 256
took 14 ms, with the event loop stopped and every stream waiting. A burst of 1,000 streams crosses
four of those. nginx, single-threaded, never waits on it. Grown once at start, before any stream,
the table never shrinks, and those ``accept()`` and ``socket()`` calls stay cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource

TABLE = 65_536  # descriptors the table is sized for at start, at most: 512 KiB of kernel memory
SMALLEST = 64   # the table every process starts with holds this many (NR_OPEN_DEFAULT, BITS_PER_LONG)


def raise_open_file_limit() -> None:
    """Each stream holds two descriptors (client and upstream): lift the soft limit to the hard one,
    as nginx's worker_rlimit_nofile would, so a default soft limit of 1,024 does not cap a server at
    about 500 streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def size_table(most: int = TABLE) -> int:
    """Make the kernel's descriptor table hold descriptors up to the soft limit (at most ``most``):
    one descriptor is opened that high and closed. ``F_DUPFD`` takes the lowest free descriptor
    at or above the one asked for, so no descriptor in use is touched. Returns the number the table
    was sized for (0: left as it was)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = most
    top = min(soft, most) - 1
    if top < SMALLEST:
        return 0
    try:
        source = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        os.close(fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, top))
    except OSError:  # the limit is lower than it said, or the kernel refuses: a table that grows as it goes
        return 0
    finally:
        os.close(source)
    return top + 1
