"""The exceptions every layer raises, and what each means to the caller.

This module sits at the bottom of the package (it imports nothing of lakerec), so that the
storage, batch and streaming layers raise the same types that :mod:`pipelines.runtime.cli`
turns into exit codes and :mod:`pipelines.streaming.supervisor` sorts into "restart" and
"give up". Classify by these types, never by searching an error's text.

==========================  ====  ========================================================
type                        exit  meaning
==========================  ====  ========================================================
:class:`UsageError`         2     how the command was called (flag, path, config value)
:class:`ConflictError`      3     a concurrent writer committed first; re-run the job
:class:`DataError`          1     the tables do not hold what the job needs
:class:`FatalStreamError`   1     a stream failure a restart cannot cure (lost offsets,
                                  a refused checkpoint, a bad Kafka config)
:class:`TransientError`     1     worth a restart from the checkpoint (broker outage)
==========================  ====  ========================================================

Example
-------
>>> issubclass(UsageError, LakerecError), issubclass(UsageError, ValueError)
(True, True)
>>> exit_code(ConflictError("v7 was taken"))
3
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFLICT = 0, 1, 2, 3


class LakerecError(Exception):
    """Base of every error lakerec raises on purpose."""


class UsageError(LakerecError, ValueError):
    """A problem with how a command was called. Reported as one line, exit code 2."""


class DataError(LakerecError, RuntimeError):
    """The tables do not hold what the job needs (e.g. an empty holdout)."""


class ConflictError(LakerecError, RuntimeError):
    """Another writer committed a conflicting change first. Re-run the job (exit 3)."""


class FatalStreamError(LakerecError, RuntimeError):
    """A streaming failure that restarting from the checkpoint would only repeat."""


class TransientError(LakerecError, RuntimeError):
    """A failure of something outside lakerec (a broker outage) that may pass by itself."""


def exit_code(exc: BaseException) -> int:
    """The process exit code for ``exc`` (see the table above)."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT
    return EXIT_FAILED


_ERROR_CLASS = r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]"


def spark_cause(exc: BaseException, limit: int = 400) -> str:
    """One line saying what went wrong in a failed Spark job, the file it names included.

    A JVM failure arrives as a Python exception whose text holds the whole Java chain
    ("An error occurred while calling o1109.parquet", then the stage failure, then each
    cause). The most specific line is the innermost one that carries a Spark error class
    (``[FAILED_READ_FILE.PARQUET_COLUMN_DATA_TYPE_MISMATCH] Error while reading file ...``),
    else the innermost ``Caused by:``, else the first line of the text.

    >>> spark_cause(RuntimeError("An error occurred while calling o9.parquet.\\n: x.SparkException:"
    ...     " Job aborted: y.SparkException: [FAILED_READ_FILE.NO_HINT] Error while reading"
    ...     " file file:///d/a.parquet.\\n\\tat z\\nCaused by: java.io.EOFException: end"))
    '[FAILED_READ_FILE.NO_HINT] Error while reading file file:///d/a.parquet. (java.io.EOFException: end)'
    """
    import re

    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines()]
    classed = [ln[m.start():] for ln in lines if (m := _last_match(_ERROR_CLASS, ln))]
    causes = [ln[len("Caused by: "):] for ln in lines if ln.startswith("Caused by: ")]
    head = classed[-1] if classed else None
    root = causes[-1] if causes else None
    if head and root and root not in head:
        out = f"{head} ({root})"
    else:
        out = head or root or next((ln for ln in lines if ln), type(exc).__name__)
    out = re.sub(r"\s+", " ", out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _last_match(pattern: str, line: str):
    import re

    found = list(re.finditer(pattern, line))
    return found[-1] if found else None
