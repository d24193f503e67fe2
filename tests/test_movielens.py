"""MovieLens import: pyspark's bundled real sample and the three file layouts."""

from __future__ import annotations

import json
import os

import pyspark
import pytest

from pipelines.batch.ingest import ingest_catalog, ingest_date
from pipelines.dev import movielens
from pipelines.runtime.config import UsageError
from pipelines.storage import delta, landing
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE

SAMPLE = os.path.join(os.path.dirname(pyspark.__file__),
                      "data/mllib/als/sample_movielens_ratings.txt")


def import_to(spark, path, out):
    files = movielens.locate(path)
    r = movielens.ratings(spark, files)
    items = movielens.movies(spark, files, r.select("item").distinct())
    landing.write_landing(movielens.to_event_lines(r), movielens.to_catalog_lines(items), out, {})


def read_lines(folder):
    out = []
    for f in landing.list_files(folder):
        with open(f.path, encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out


def test_bundled_sample_imports_and_ingests(spark, lakehouse):
    out = os.path.join(lakehouse, "landing")
    import_to(spark, SAMPLE, out)
    with open(SAMPLE) as f:
        raw = [line.strip().split("::") for line in f if line.strip()]
    dates = landing.list_dates(os.path.join(out, "events"))
    for d in dates:
        ingest_date(spark, lakehouse, d, source=os.path.join(out, "events"))
    ingest_catalog(spark, lakehouse, source=os.path.join(out, "items"))
    inter = delta.read(spark, lakehouse, INTERACTIONS)
    assert inter.count() == len(raw) == 1501
    assert delta.read(spark, lakehouse, QUARANTINE).count() == 0
    got = {(r.user_id, r.item_id): r.value for r in inter.collect()}
    assert all(got[(u, i)] == float(s) for u, i, s, _ in raw)
    assert delta.read(spark, lakehouse, ITEMS).count() == len({i for _, i, _, _ in raw})


def test_100k_layout_with_latin1_titles(spark, tmp_path):
    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t4\t891717742\n")
    flags = "|".join(["0"] * 19)
    genres = flags[:2] + "1" + flags[3:]  # flag 1 = Action
    (src / "u.item").write_bytes(
        f"242|Caf\xe9 Society (1995)|01-Jan-1995||http://x|{genres}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{flags}\n".encode("latin-1"))
    import_to(spark, str(src), str(tmp_path / "out"))
    events = sorted(read_lines(tmp_path / "out" / "events"), key=lambda e: e["event_id"])
    assert events[0] == {"event_id": "ml-186-302", "user_id": "186", "item_id": "302",
                         "event_type": "rating", "value": 4.0, "ts": 891717742000,
                         "source": "movielens"}
    items = {i["item_id"]: i for i in read_lines(tmp_path / "out" / "items")}
    assert items["242"]["title"] == "Café Society (1995)"
    assert items["242"]["category"] == "Action"
    assert items["242"]["created_at"] == "1995-01-01T00:00:00Z"


def test_csv_layout(spark, tmp_path):
    src = tmp_path / "ml-latest-small"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,964982703\n")
    (src / "movies.csv").write_text('movieId,title,genres\n10,"American President, The (1995)",'
                                    "Comedy|Drama|Romance\n")
    import_to(spark, str(src), str(tmp_path / "out"))
    (e,) = read_lines(tmp_path / "out" / "events")
    assert (e["user_id"], e["item_id"], e["value"]) == ("1", "10", 4.5)
    (i,) = read_lines(tmp_path / "out" / "items")
    assert i["title"] == "American President, The (1995)"
    assert i["category"] == "Comedy|Drama|Romance"


def test_no_ratings_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        movielens.locate(str(tmp_path))
    with pytest.raises(UsageError):
        movielens.locate(str(tmp_path / "missing"))
