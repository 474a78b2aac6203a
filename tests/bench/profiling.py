"""py-spy on the proxy for one scenario: one recording in py-spy's raw (collapsed stack) format, from
which this module draws the flame graph SVG and the top listing, so both describe the same samples."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE = 250  # samples per second: enough for a quick scenario of a second or two


def ensure_pyspy() -> str:
    """py-spy beside this interpreter, installed from PyPI into its venv if missing."""
    beside = Path(sys.executable).parent / "py-spy"
    if not beside.exists() and not shutil.which("py-spy"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True, timeout=600)
    return str(beside) if beside.exists() else str(shutil.which("py-spy"))


class Recorder:
    """``py-spy record`` attached to one PID until stopped (SIGINT makes it write its file)."""

    def __init__(self, pyspy: str, pid: int, raw: Path, cpus: frozenset[int] | None) -> None:
        self.raw = raw
        self.log = sibling(raw, ".log")

        def pin() -> None:  # beside the load client, not on the proxy's CPU
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--nolineno",
                 "--output", str(raw)], stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.raw.exists():
            raise RuntimeError(f"py-spy wrote no profile; its output: {self.log.read_text()[-2000:]}")


def sibling(raw: Path, suffix: str) -> Path:
    """``x.raw.txt`` -> ``x.svg``, ``x.top.txt``, ``x.log``."""
    return raw.with_name(raw.name.removesuffix(".raw.txt") + suffix)


def read_stacks(raw: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def short(frame: str) -> str:
    """``func (/long/path/aiohttp/web_protocol.py)`` -> ``func (aiohttp/web_protocol.py)``."""
    return re.sub(r"\((?:[^()]*/)?((?:[^/()]+/)?[^/()]+)\)$", r"(\1)", frame)


def top(stacks: Counter[tuple[str, ...]], n: int = 15) -> list[tuple[str, float, float]]:
    """The n functions with the most samples of their own: (function, own %, total %)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for stack, count in stacks.items():
        own[short(stack[-1])] += count
        for frame in {short(f) for f in stack}:
            total[frame] += count
    samples = sum(stacks.values()) or 1
    return [(f, 100 * c / samples, 100 * total[f] / samples) for f, c in own.most_common(n)]


def top_text(stacks: Counter[tuple[str, ...]], n: int) -> str:
    rows = [f"{'own %':>7} {'total %':>7}  function"]
    rows += [f"{o:7.1f} {t:7.1f}  {f}" for f, o, t in top(stacks, n)]
    return "\n".join(rows)


@dataclass
class Node:
    count: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1200, row: int = 16) -> str:
    """A flame graph (root at the bottom, children sorted by name as flamegraph.pl does)."""
    root = Node()
    for stack, count in stacks.items():
        node = root
        node.count += count
        for frame in stack:
            node = node.children.setdefault(short(frame), Node())
            node.count += count

    def depth(node: Node) -> int:
        return 1 + max((depth(c) for c in node.children.values()), default=0)

    height = (depth(root) + 2) * row
    total = root.count or 1
    scale = (width - 20) / total
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11">', '<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="10" y="{row}" font-size="13">{html.escape(title)} ({total:,} samples)</text>']

    def draw(name: str, node: Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < 0.3:
            return
        y = height - (level + 1) * row
        hue = zlib.crc32(name.encode()) % 60
        label = f"{name} ({node.count:,} samples, {100 * node.count / total:.1f}%)"
        out.append(f'<g><title>{html.escape(label)}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                   f'height="{row - 1}" fill="hsl({hue},85%,{55 + hue % 15}%)"/>')
        chars = int(w / 7)
        if chars >= 3:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        for child_name in sorted(node.children):
            child = node.children[child_name]
            draw(child_name, child, x, level + 1)
            x += child.count * scale

    x = 10.0
    for name in sorted(root.children):
        draw(name, root.children[name], x, 0)
        x += root.children[name].count * scale
    out.append("</svg>")
    return "\n".join(out)


def save(raw: Path, scenario: str, n: int = 15) -> tuple[Path, Path, str]:
    """Write the SVG and the full top listing beside the raw file; return their paths and the top n."""
    stacks = read_stacks(raw)
    svg = sibling(raw, ".svg")
    svg.write_text(flame_svg(stacks, f"sseproxy, scenario {scenario}"))
    listing = sibling(raw, ".top.txt")
    listing.write_text(top_text(stacks, 200) + "\n")
    return svg, listing, top_text(stacks, n)
