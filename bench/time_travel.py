"""TIMESTAMP AS OF: the binary search over the log's commit files against delta-rs' history
read newest first (the way before), at two log lengths, side by side in one run.

    python bench/time_travel.py [--commits 300 3000]

Each table gets N one-row commits (what a stream committing every batch leaves); the probe
asks for a time just after the first commit, the worst case for a newest-first walk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    import pyarrow as pa

    from bench.common import machine
    from pipelines.storage import delta, deltalog
    from schemas.tables import ITEMS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, nargs="+", default=[300, 3000])
    args = p.parse_args(argv)
    print(machine())
    now = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    row = pa.Table.from_pylist([{"item_id": "i", "title": "t", "description": None,
                                 "category": "c", "created_at": now, "ingest_source": "b",
                                 "ingest_id": "b"}], schema=ITEMS.arrow_schema())
    for n in args.commits:
        with tempfile.TemporaryDirectory() as lh:
            for _ in range(n):
                delta.append_arrow(lh, ITEMS, row)
            first = delta.history(lh, ITEMS, counts=False)[-1].at
            when = first + dt.timedelta(microseconds=500)
            t = time.perf_counter()
            fast = delta.version_at(lh, ITEMS, when)
            t_fast = time.perf_counter() - t
            t = time.perf_counter()
            slow = deltalog._version_at_by_history(lh, ITEMS, "items", when)
            t_slow = time.perf_counter() - t
            assert fast == slow, (fast, slow)
            print(f"{n:>6} commits: binary search {t_fast * 1000:8.1f} ms, history walk "
                  f"{t_slow * 1000:8.1f} ms, ratio {t_slow / t_fast:6.1f}x (v{fast})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
