"""``lakerec``: one console command, one sub-command per job in ``jobs/``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("jobs.generate", "synthetic logs and catalog into the landing zone"),
    "import-movielens": ("jobs.import_movielens", "MovieLens files into the landing zone"),
    "ingest": ("jobs.ingest", "validate and load one day of logs (and the catalog)"),
    "train": ("jobs.train", "ALS or EASE, gated against the champion or popularity, MLflow"),
    "embed": ("jobs.embed", "item text -> ONNX embeddings, similar items, cold-start eval"),
    "place": ("jobs.place", "place new items in the champion's factor space from their text"),
    "score": ("jobs.score", "top-K recommendations for every user"),
    "stream": ("jobs.stream", "Kafka feedback -> fold-in -> fresh recommendations, exactly once"),
    "publish": ("jobs.publish", "push the changed lists to the online store (exactly once)"),
    "serve": ("jobs.serve", "the HTTP recommendation API over the online store"),
    "broker": ("jobs.broker", "start/stop a local Kafka-compatible broker"),
    "produce": ("jobs.produce", "send events (replayed logs or synthetic feedback) to Kafka"),
    "sql": ("jobs.sql", "analyst SQL over the tables (DuckDB), with time travel"),
    "check": ("jobs.check", "quality gate: the recommendations' invariants"),
    "status": ("jobs.status", "the lakehouse at a glance: freshness, lag, champion, alerts"),
    "report": ("jobs.report", "an HTML report with plots: models, lists, freshness, quarantine"),
    "doctor": ("jobs.doctor", "check every table's log and files; how to recover"),
    "models": ("jobs.models", "list the models; promote one to champion, or roll back"),
    "history": ("jobs.history", "a table's commits: versions, times, operations, jobs"),
    "restore": ("jobs.restore", "restore a table to an earlier version"),
    "compact": ("jobs.compact", "fold superseded stream rows out of the merge-on-read tables"),
    "maintain": ("jobs.maintain", "compact, checkpoint and vacuum the tables (weekly)"),
    "package": ("jobs.package", "build the --py-files and --archives a cluster needs"),
    "demo": ("jobs.demo", "the whole loop end to end on the embedded defaults"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lakerec <command> [options]   (lakerec <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from pipelines import __version__

        print(f"lakerec {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"lakerec: error: unknown command {argv[0]!r} (one of: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
