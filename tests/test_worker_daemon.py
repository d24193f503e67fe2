"""The Python worker daemon: zip archives re-read on invalidation only when they changed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

# Runs in a fresh interpreter: the patch changes a class of the standard library.
PROBE = textwrap.dedent("""
    import importlib, sys, zipimport
    from pipelines.runtime import worker_daemon

    archive = sys.argv[1]
    sys.path.insert(0, archive)
    import mod_a
    assert mod_a.VALUE == 1
    reads = []
    real = zipimport._read_directory
    zipimport._read_directory = lambda path: reads.append(path) or real(path)
    print("patched", worker_daemon.patch_zipimport())
    importlib.invalidate_caches()          # first sight of each importer: re-read once
    first = len(reads)
    for _ in range(5):
        importlib.invalidate_caches()      # unchanged archive: nothing re-read
    print("first", first)
    print("unchanged", len(reads) - first)
    import zipfile, os, time
    st = os.stat(archive)
    with zipfile.ZipFile(archive, "a") as z:   # the archive changes: a new module appears
        z.writestr("mod_b.py", "VALUE = 2\\n")
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    importlib.invalidate_caches()
    import mod_b
    print("changed", mod_b.VALUE)
""")


def test_zip_archives_are_reread_only_when_they_change(tmp_path):
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("mod_a.py", "VALUE = 1\n")
    r = subprocess.run([sys.executable, "-c", PROBE, str(archive)], capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    if sys.version_info >= (3, 12):
        assert out["patched"] == "False"  # the interpreter already invalidates lazily
        return
    assert out["patched"] == "True"
    assert int(out["first"]) >= 1 and out["unchanged"] == "0"
    assert out["changed"] == "2"  # a changed archive is still re-read: imports see it


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the patch applies to Python < 3.12")
def test_spark_workers_run_under_the_patched_daemon(spark):
    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == \
        "pipelines.runtime.worker_daemon"

    def probe(batches):
        import zipimport

        import pyarrow as pa

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist(
            [{"patched": bool(getattr(zipimport.zipimporter, "_lakerec_patched", False))}])

    rows = spark.range(4).coalesce(2).mapInArrow(probe, "patched boolean").collect()
    assert rows and all(r.patched for r in rows)
