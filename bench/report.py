"""Shared by every benchmark script: print a table and keep its section of docs/benchmarks.md.

Each benchmark owns one section between `<!-- bench:NAME -->` markers, so running one
benchmark refreshes its figures without touching the others.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS_FILE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = (
    "# radproto benchmarks\n\n"
    "Written by the scripts under `bench/` (`make bench` runs them all). Each section names the\n"
    "machine it ran on and compares against a baseline measured in the same run.\n"
)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, title: str, body: str, *, path: Path = BENCHMARKS_FILE,
                  measured: str | None = None) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md and print it.

    `measured`: when the figures were taken, for a section written later from saved
    results (default: now, for a benchmark that writes as it measures)."""
    stamp = measured or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"<!-- bench:{name} -->\n## {title}\n\n_Measured {stamp}._\n\n{body.strip()}\n"
    section += f"<!-- /bench:{name} -->"
    print(section)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
