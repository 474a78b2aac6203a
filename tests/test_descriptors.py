"""The kernel's descriptor table is sized at start (``descriptors.py``), so a serving process never
grows it while streams open: with uvloop's worker threads, each doubling stopped the loop for an RCU
grace period (14 ms measured at descriptor 256)."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from procs import sseproxy_process

from sseproxy.descriptors import TABLE

# Run in a child under a given limit: what size_table returns, the descriptors open before and after,
# the table's size (FDSize) and whether a descriptor the child holds at the top is still open.
CHILD = """
import json, os, resource, sys
from sseproxy.descriptors import size_table
limit, hold_top = int(sys.argv[1]), sys.argv[2] == "hold"
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
top = limit - 1 if hold_top else 0
held = None
if top:
    held = os.dup2(os.open(os.devnull, os.O_RDONLY), top)
before = sorted(os.listdir("/proc/self/fd"))
sized = size_table()
after = sorted(os.listdir("/proc/self/fd"))
fdsize = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("FDSize:"))
still = held is not None and os.fstat(held) is not None
print(json.dumps({"sized": sized, "before": before, "after": after, "fdsize": fdsize, "held": still}))
"""


def run_child(limit: int, hold_top: bool = False) -> dict[str, object]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(limit, hard)
    out = subprocess.run([sys.executable, "-c", CHILD, str(limit), "hold" if hold_top else "-"],
                         capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    result["limit"] = limit
    return result


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc: the kernel's own record)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


def table_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("FDSize:"))


def test_the_table_is_sized_for_the_soft_limit_and_no_descriptor_is_left_open() -> None:
    child = run_child(4096)
    limit = child["limit"]
    assert isinstance(limit, int) and limit > 256, "this machine's hard limit is too low to tell"
    assert child["sized"] == limit
    assert isinstance(child["fdsize"], int) and child["fdsize"] >= limit
    assert child["before"] == child["after"]


def test_a_limit_within_the_table_a_process_starts_with_is_left_alone() -> None:
    """(The table's size itself is not asserted: a child starts with its parent's, whatever that is.)"""
    child = run_child(60)
    assert child["sized"] == 0
    assert child["before"] == child["after"]


def test_a_descriptor_in_use_at_the_top_is_never_touched() -> None:
    """``F_DUPFD`` takes the lowest free descriptor at or above the one asked for: with the top one
    taken there is none, the table is left to grow as it goes, and the held descriptor stays open."""
    child = run_child(4096, hold_top=True)
    assert child["sized"] == 0
    assert child["held"] is True
    assert child["before"] == child["after"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_serving_process_has_its_table_sized_before_any_stream(workers: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with sseproxy_process("serve", "--listen", "127.0.0.1:0", "--route", "/=http://127.0.0.1:1",
                                "--workers", str(workers)) as (proc, _):
        if workers == 1:
            assert table_size(proc.pid) >= min(hard, TABLE)
        else:  # the supervisor serves nothing; each worker sized its own
            workers_seen = children(proc.pid)
            assert len(workers_seen) == 2
            assert all(table_size(pid) >= min(hard, TABLE) for pid in workers_seen)
