"""Run every benchmark (each bench/*_bench.py module with a `main()`), or those named; options after `--` go to each.

python -m bench                       # all of them, with their defaults
python -m bench ledger                # bench/ledger_bench.py only
python -m bench ledger -- --runs 3    # with options for it
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path


def discover() -> list[str]:
    """Names of the benchmark modules present, e.g. ["ledger_bench", "tracking_bench"]."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*_bench.py"))


def main(argv: list[str]) -> int:
    names = discover()
    split = argv.index("--") if "--" in argv else len(argv)
    chosen, options = argv[:split], argv[split + 1 :]
    wanted = [n if n.endswith("_bench") else f"{n}_bench" for n in chosen] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; present: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            print(f"bench.{name} has no main(); skipped", file=sys.stderr)
            continue
        print(f"## {name}\n", flush=True)
        # A main() that takes argv gets the options (never sys.argv, which holds the benchmark names).
        result = entry(list(options)) if inspect.signature(entry).parameters else entry()
        failed += 1 if isinstance(result, int) and result != 0 else 0
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
