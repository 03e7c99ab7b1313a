"""Benchmarks: `python -m bench` runs every bench/*_bench.py module's `main()`; figures go in bench/README.md."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime


def machine() -> str:
    """One line about this machine (CPU model, cores, memory, Python, SQLite) for a results table."""
    import sqlite3

    cpu = platform.processor() or platform.machine()
    lscpu = shutil.which("lscpu")
    if lscpu:
        out = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout  # noqa: S603
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    memory = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            kib = int(fh.readline().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
