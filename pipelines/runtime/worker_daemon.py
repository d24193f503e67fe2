"""Spark's Python worker daemon, without Python 3.10/3.11's per-task zip re-read.

Spark starts its Python workers from ``pyspark.daemon`` and, before every task, the worker
calls :func:`importlib.invalidate_caches`. On Python 3.10 and 3.11 that makes each
``zipimport.zipimporter`` re-read its archive's whole directory (CPython gh-103200, fixed
lazily in 3.12). Spark puts ``pyspark.zip``, ``py4j-*.zip`` and the ``spark-core`` jar on the
workers' ``PYTHONPATH``, so every task paid about 0.12 s of CPU re-reading some ten thousand
zip entries before it saw its first row (a ``mapInArrow`` job that does nothing took
0.26-0.33 s here, and 0.14-0.18 s with this module). Every Python UDF, ``mapInArrow`` and
data-source task pays it; a stream's micro-batch pays it several times.

This module is the daemon with one change: on those Python versions, an importer re-reads its
archive only when the file changed (size or modification time), which is what the
invalidation is for. Everything else is ``pyspark.daemon``. Sessions built by
:func:`pipelines.runtime.session.build_session` use it (``spark.python.daemon.module``); under
``spark-submit`` pass ``--conf spark.python.daemon.module=pipelines.runtime.worker_daemon`` where the
executors' Python has lakerec installed.
"""

from __future__ import annotations

import os
import sys
import zipimport


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def patch_zipimport() -> bool:
    """Make ``zipimporter.invalidate_caches`` re-read an archive only when it changed.

    Returns True when the patch was applied (Python < 3.12), False when not needed.
    """
    if sys.version_info >= (3, 12) or getattr(zipimport.zipimporter, "_lakerec_patched", False):
        return False
    eager = zipimport.zipimporter.invalidate_caches

    def invalidate_caches(self):
        # The stamp lives on the importer: several importers share one archive, and each
        # holds its own copy of the directory.
        stamp = _stat(self.archive)
        if stamp is not None and getattr(self, "_lakerec_stamp", None) == stamp:
            return  # the archive is unchanged: this importer's directory is still right
        eager(self)
        self._lakerec_stamp = stamp

    zipimport.zipimporter.invalidate_caches = invalidate_caches
    zipimport.zipimporter._lakerec_patched = True
    return True


if __name__ == "__main__":  # run by Spark as ``python -m pipelines.runtime.worker_daemon``
    import importlib

    patch_zipimport()
    from pyspark.daemon import manager

    importlib.invalidate_caches()  # stamp the importers once here; forked workers inherit it

    manager()
