"""What a long step is doing: Spark job descriptions and a live progress line.

:func:`describe` names the Spark jobs a step runs after the step (the UI's job list and the
event log then read like the job's output: ``train: fit ALS``), instead of Spark's call site
``$anonfun$withThreadLocalCaptured$2``. :class:`Ticker` prints, while a step runs, the
active stages and their tasks, read from the SparkContext's status tracker: rewritten in
place on a terminal, one line every ``interval`` seconds in a log.

Cost: one status-tracker read per tick (driver memory, no Spark job).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator


def _active_context():
    """The SparkContext this process started, if any (never starts one)."""
    pyspark = sys.modules.get("pyspark")
    return getattr(getattr(pyspark, "SparkContext", None), "_active_spark_context", None)


@contextlib.contextmanager
def describe(name: str) -> Iterator[None]:
    """Jobs started inside carry ``name`` as their description and call site."""
    sc = _active_context()
    if sc is None:
        yield
        return
    keys = ("spark.job.description", "callSite.short", "callSite.long")
    before = [sc.getLocalProperty(k) for k in keys]
    for k in keys:
        sc.setLocalProperty(k, name)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the JVM may be gone (a failed or killed job)
            for k, v in zip(keys, before, strict=True):
                sc.setLocalProperty(k, v)


def stage_line(sc) -> str | None:
    """``stage 12 (fit at als.py): 3/8 tasks, 2 running`` for the active stages, or None."""
    tracker = sc.statusTracker()
    parts = []
    for sid in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(sid)
        if info is None:
            continue
        parts.append(f"stage {sid}: {info.numCompletedTasks}/{info.numTasks} tasks"
                     f"{f', {info.numActiveTasks} running' if info.numActiveTasks else ''}")
    return "; ".join(parts[:3]) or None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


class _Clearing:
    """A text stream that clears the ticker's line on the terminal before anything else is
    written to it, so that a step's own output never lands at the end of the progress line."""

    def __init__(self, stream, ticker: Ticker):
        self._stream, self._ticker = stream, ticker

    def write(self, text: str) -> int:
        self._ticker.clear()
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Ticker:
    """A daemon thread printing ``step: 45 s, stage 12: 3/8 tasks`` while a step runs.

    On a terminal the line is redrawn in place every second, and cleared before any other
    output (``print``, the log) reaches the terminal; elsewhere (a log file, Airflow) it is a
    plain line every 30 s.
    """

    def __init__(self, name: str, out=None, *, interval: float | None = None):
        self.name, self.out = name, out or sys.stdout
        self.tty = _is_terminal(self.out)
        self.interval = interval if interval is not None else (1.0 if self.tty else 30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lakerec-progress")
        self._t0 = time.perf_counter()
        self._drawn = False
        self._lock = threading.RLock()
        self._swapped: list = []  # (restore function) of each stream redirected through us

    def clear(self) -> None:
        with self._lock:
            if self._drawn:
                self._drawn = False
                self.out.write("\r\033[K")
                self.out.flush()

    def _redirect(self) -> None:
        """Route stdout, stderr and the log handlers writing to them through :class:`_Clearing`."""
        import logging

        for attr in ("stdout", "stderr"):
            old = getattr(sys, attr)
            setattr(sys, attr, _Clearing(old, self))
            self._swapped.append(lambda a=attr, o=old: setattr(sys, a, o))
        for h in logging.getLogger().handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and _is_terminal(stream):
                h.setStream(_Clearing(stream, self))
                self._swapped.append(lambda h=h, o=stream: h.setStream(o))

    def __enter__(self) -> Ticker:
        if _active_context() is not None:
            if self.tty:
                self._redirect()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with self._lock:  # a tick still running past the join draws nothing after this
            self.clear()
            for restore in reversed(self._swapped):
                restore()
            self._swapped.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sc = _active_context()
            try:
                stages = stage_line(sc) if sc is not None else None
            except Exception:  # noqa: BLE001 - the JVM is stopping: nothing to show
                return
            took = time.perf_counter() - self._t0
            line = f"    {self.name}: {took:.0f} s" + (f", {stages}" if stages else "")
            with self._lock:
                if self._stop.is_set():
                    return
                if self.tty:
                    self.out.write(f"\r\033[K{line[:160]}")
                    self.out.flush()
                    self._drawn = True
                else:
                    print(line, file=self.out, flush=True)
