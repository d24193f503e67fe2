"""Plumbing shared by the ``jobs/`` entry points: argument parsing, logging, exit codes.

Exit codes: 0 success, 1 failure, 2 usage error (one line on stderr, nothing written),
3 a concurrent writer won a commit race (re-run the job).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pipelines.errors import EXIT_CONFLICT, EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConflictError
from pipelines.runtime.config import Settings, UsageError

log = logging.getLogger("lakerec")
C = TypeVar("C")

__all__ = ["EXIT_CONFLICT", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "parser", "parse_args",
           "run", "step"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as :class:`UsageError` instead of exiting by itself."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def parser(command: str, description: str) -> ArgumentParser:
    """A parser with the options every command shares."""
    p = ArgumentParser(prog=f"lakerec {command}", description=description)
    p.add_argument("--lakehouse", help="lakehouse root (env LAKEREC_LAKEHOUSE, default "
                                       "./lakehouse)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    return p


TABLE_FORMATS = ("table", "csv", "json")  # what storage.sql.format_rows renders


def add_format_option(p: ArgumentParser, what: str = "output") -> None:
    """``--format table|csv|json``, the one option of every command that prints rows."""
    p.add_argument("--format", default="table", choices=TABLE_FORMATS,
                   help=f"{what}: table (aligned text, default), csv, or json (one object "
                        "per line)")


def parse_args(p: ArgumentParser, argv: list[str] | None, *, section: str):
    """Parse ``argv`` and resolve the shared settings; returns ``(args, settings)``."""
    args = p.parse_args(argv)
    settings = Settings.resolve(flags={"lakehouse": args.lakehouse}, section=section)
    return args, settings


def configure_logging(level: str | None = None) -> None:
    # MLflow configures its own handler and format unless told not to: one format, ours
    import os

    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    lvl = (level or "INFO").upper()
    if lvl not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"bad --log-level {level!r}")
    logging.basicConfig(level=getattr(logging, lvl), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("py4j", "urllib3", "alembic", "mlflow", "git", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pyspark logs every failed query's whole plan as JSON; the job reports the error itself
    logging.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)


_steps: list[str] = []  # the steps running now, outermost first (named in a failure line)


@contextlib.contextmanager
def step(name: str, out=None) -> Iterator[None]:
    """Print a step's name when it starts and its duration when it ends; in between, name
    its Spark jobs after it and show its progress (:mod:`pipelines.runtime.progress`)."""
    from pipelines.runtime.progress import Ticker, describe

    out = out or sys.stdout
    print(f"==> {name}", file=out, flush=True)
    t = time.perf_counter()
    _steps.append(name)
    label = " / ".join(_steps)
    try:
        # the Spark jobs of the step carry its name (UI, event log); the outermost step
        # shows a progress line while it runs
        with describe(label), (Ticker(name, out) if len(_steps) == 1 else
                               contextlib.nullcontext()):
            yield
    except BaseException:
        if _steps and _steps[-1] == name and len(_steps) == 1:
            _failed_step[:] = [name]
        raise
    finally:
        _steps.pop()
    print(f"    {name}: done in {time.perf_counter() - t:.1f} s", file=out, flush=True)


_failed_step: list[str] = []


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler, after the JVM was stopped."""


_terminated: list[int] = []  # the signal that stopped this job, once it did


def _stop_jvm_on_sigterm(command: str):
    """SIGTERM handler: stop the JVM this process started, then unwind and exit 143.

    Python's default handling ends only this process, and the JVM it launched (a child of
    ours, not of the signaller) kept running -- at one core and gigabytes, for as long as
    nobody killed it. The JVM gets SIGTERM (its shutdown hooks stop Spark), then SIGKILL
    after 10 s; then :class:`Terminated` unwinds the job, so that its ``finally`` blocks
    remove staged files. Under ``spark-submit`` the JVM is our parent and ends the job.
    """
    import signal

    def handler(signum, _frame):
        if _terminated:
            return
        _terminated.append(signum)
        print(f"lakerec {command}: terminated (signal {signum})", file=sys.stderr, flush=True)
        ctx = sys.modules.get("pyspark") and sys.modules["pyspark"].SparkContext
        proc = getattr(getattr(ctx, "_gateway", None), "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - whatever happens, it must not outlive us
                proc.kill()
        raise Terminated(signum)

    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def run(command: str, argv: list[str] | None, parse: Callable[[list[str] | None], C],
        body: Callable[[Any, C], int | None], *, spark: bool = True,
        log_level: Callable[[C], str | None] = lambda c: getattr(c, "log_level", None)) -> int:
    """Run a job: parse (usage errors exit 2 before anything starts), build Spark, run ``body``.

    ``body(spark, config)`` returns an exit code (``None`` = 0).
    """
    try:
        config = parse(argv)
        configure_logging(log_level(config))
        if spark:
            import os

            from pipelines.runtime.session import check_env

            check_env(os.environ)
    except UsageError as e:
        print(f"lakerec {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    session = None
    _failed_step.clear()
    _terminated.clear()
    try:
        if spark:
            from pipelines.runtime.session import build_session

            _stop_jvm_on_sigterm(command)
            session = build_session(f"lakerec-{command}")
        code = body(session, config)
        return EXIT_OK if code is None else code
    except UsageError as e:
        print(f"lakerec {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConflictError as e:
        print(f"lakerec {command}: conflict: {e}", file=sys.stderr)
        return EXIT_CONFLICT
    except KeyboardInterrupt:
        print(f"lakerec {command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as t:
        return 128 + t.args[0]
    except Exception as e:  # the one place a job reports an unexpected failure
        if _terminated:  # a clean-up after the JVM was stopped failed: still a SIGTERM
            return 128 + _terminated[0]
        from pipelines.errors import spark_cause

        log.debug("lakerec %s failed", command, exc_info=True)
        where = f" in step '{_failed_step[0]}'" if _failed_step else ""
        print(f"lakerec {command}: failed{where}: {type(e).__name__}: {spark_cause(e)}",
              file=sys.stderr)
        print("    (run with --log-level DEBUG for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if session is not None and not _terminated:
            session.stop()
