"""The overhead benchmark's command line: ``.venv/bin/python benchmarks/overhead [--rounds 5] ...``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a folder, Python puts this package's own folder first on sys.path: import it from its parent instead.
sys.path[:] = [str(HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

import overhead  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=overhead.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="where the federations run (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here, e.g. benchmarks/overhead.json")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each federation, wait up to this many seconds for other processes to leave the CPUs alone",
    )
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="lab-overhead-"))
    result = overhead.measure(workspace, rounds=args.rounds, quiet_wait=args.quiet_wait)
    print(overhead.table(result))
    print(f"logs, events and timings kept in {workspace}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
