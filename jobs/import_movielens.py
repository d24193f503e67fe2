"""lakerec import-movielens: MovieLens ratings/movies -> landing logs and catalog.

    lakerec import-movielens PATH [--out PATH]
    spark-submit jobs/import_movielens.py PATH  (same arguments)

PATH is a MovieLens folder or ratings file: ratings.csv (+ movies.csv), u.data (+ u.item),
ratings.dat/*.txt with "::" separators (+ movies.dat), e.g. pyspark's bundled
pyspark/data/mllib/als/sample_movielens_ratings.txt. Then: lakerec ingest --all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli


@dataclass(frozen=True)
class ImportConfig:
    source: str
    out: str
    log_level: str | None


def parse(argv: list[str] | None) -> ImportConfig:
    from pipelines.dev.movielens import locate

    p = cli.parser("import-movielens", "Convert MovieLens files to lakerec's input formats.")
    p.add_argument("path", help="MovieLens folder or ratings file")
    p.add_argument("--out", help="landing folder (default <lakehouse>/landing)")
    args, s = cli.parse_args(p, argv, section="import_movielens")
    locate(args.path)  # fails early, as a usage error, on a path with no ratings
    out = s.check_writable(s.get("out", flag=args.out, default=s.path("landing")), "--out")
    return ImportConfig(os.path.abspath(args.path), out, args.log_level)


def body(spark, cfg: ImportConfig) -> int:
    from pipelines.dev import movielens
    from pipelines.storage import landing

    files = movielens.locate(cfg.source)
    with cli.step(f"import MovieLens ({files.layout}) from {cfg.source}"):
        ratings = movielens.ratings(spark, files).persist()
        lines = movielens.to_event_lines(ratings)
        items = movielens.movies(spark, files, ratings.select("item").distinct())
        manifest = {"generator": "lakerec.import-movielens", "source": cfg.source,
                    "layout": files.layout}
        counts = landing.write_landing(lines, movielens.to_catalog_lines(items), cfg.out,
                                       manifest)
        n = ratings.count()
        ratings.unpersist()
    print(f"    {n:,} ratings in {counts['event_files']} files under {cfg.out}/events; "
          f"catalog under {cfg.out}/items. Next: lakerec ingest --all")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("import-movielens", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
