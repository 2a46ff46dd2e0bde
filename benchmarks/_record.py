"""Write a benchmark's Markdown section into BENCHMARKS.md between named markers."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path


def machine() -> str:
    """One line on where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section between <!-- key:start --> and <!-- key:end -->."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    section = (
        f"<!-- {key}:start -->\n_Measured {stamp} on {machine()}._\n\n{body.strip()}\n"
        f"<!-- {key}:end -->"
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{section}\n"
    )
    path.write_text(text)
