"""A target for tests/test_forked.py to fork: it says where and how it runs, then waits, leaves a
process behind, or exits."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    print(json.dumps({"argv": argv, "cwd": os.getcwd(), "sid": os.getsid(0), "env": dict(os.environ)}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if argv and argv[0] == "wait":
        time.sleep(600)
    if argv and argv[0] == "orphan":  # leave a process of its own behind, as a SuperExec's ServerApp may
        child = os.fork()
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(json.dumps({"orphan": child}), flush=True)
    return int(argv[0]) if argv and argv[0].isdigit() else 0
