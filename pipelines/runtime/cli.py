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


def parse_args(p: ArgumentParser, argv: list[str] | None, *, section: str):
    """Parse ``argv`` and resolve the shared settings; returns ``(args, settings)``."""
    args = p.parse_args(argv)
    settings = Settings.resolve(flags={"lakehouse": args.lakehouse}, section=section)
    return args, settings


def configure_logging(level: str | None = None) -> None:
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


@contextlib.contextmanager
def step(name: str, out=None) -> Iterator[None]:
    """Print a step's name when it starts and its duration when it ends."""
    out = out or sys.stdout
    print(f"==> {name}", file=out, flush=True)
    t = time.perf_counter()
    yield
    print(f"    {name}: done in {time.perf_counter() - t:.1f} s", file=out, flush=True)


def run(command: str, argv: list[str] | None, parse: Callable[[list[str] | None], C],
        body: Callable[[Any, C], int | None], *, spark: bool = True,
        log_level: Callable[[C], str | None] = lambda c: getattr(c, "log_level", None)) -> int:
    """Run a job: parse (usage errors exit 2 before anything starts), build Spark, run ``body``.

    ``body(spark, config)`` returns an exit code (``None`` = 0).
    """
    try:
        config = parse(argv)
        configure_logging(log_level(config))
    except UsageError as e:
        print(f"lakerec {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    session = None
    try:
        if spark:
            from pipelines.runtime.session import build_session

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
    except Exception as e:  # the one place a job reports an unexpected failure
        first = (str(e).splitlines() or [""])[0][:500]
        log.debug("lakerec %s failed", command, exc_info=True)
        print(f"lakerec {command}: failed: {type(e).__name__}: {first}", file=sys.stderr)
        print("    (run with --log-level DEBUG for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if session is not None:
            session.stop()
