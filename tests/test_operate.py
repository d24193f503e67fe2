"""Living with a lakehouse: time travel by commit time that survives a copy, a lakehouse
that is not one refused before anything is written (real Delta tables, the real CLI)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time

import pyarrow as pa
import pytest

from pipelines.errors import UsageError
from pipelines.storage import delta
from pipelines.storage.sql import query, rewrite
from schemas.tables import ITEMS
from tests.conftest import VENV_BIN, job_env, overwrite


def lakerec(*args, cwd=None, **env):
    return subprocess.run([str(VENV_BIN / "lakerec"), *args], capture_output=True, text=True,
                          env=job_env(**env), timeout=300, cwd=cwd)


def items(n: int, tag: str) -> pa.Table:
    now = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return pa.Table.from_pylist([
        {"item_id": f"{tag}{j}", "title": f"title {j}", "description": None, "category": "c",
         "created_at": now, "ingest_source": "test", "ingest_id": tag}
        for j in range(n)], schema=ITEMS.arrow_schema())


@pytest.fixture
def versions(tmp_path):
    """``items`` at v1, v2, v3 (1, 2, 3 rows); returns (lakehouse, commit time of each)."""
    lh = str(tmp_path / "lh")
    for v in range(1, 4):
        delta.append_arrow(lh, ITEMS, items(1, f"v{v}-"))
        time.sleep(0.05)
    return lh, {c.version: c.at for c in delta.history(lh, ITEMS)}


def count(lh, sql):
    return query(lh, sql)[1][0][0]


def test_timestamp_as_of_uses_commit_times_and_survives_a_copy(versions, tmp_path):
    lh, at = versions
    copy = str(tmp_path / "copy")
    shutil.copytree(lh, copy, copy_function=shutil.copy)  # new modification times
    for root in (lh, copy):
        for v in (1, 2, 3):
            mid = at[v] + dt.timedelta(milliseconds=20)
            got = count(root, f"SELECT count(*) FROM items TIMESTAMP AS OF '{mid.isoformat()}'")
            assert got == v, (root, v)
        assert count(root, "SELECT count(*) FROM items VERSION AS OF 2") == 2
    before = (at[0] - dt.timedelta(days=1)).isoformat()
    with pytest.raises(UsageError, match=r"no version as of .*first commit, v0, was made at"):
        query(copy, f"SELECT count(*) FROM items TIMESTAMP AS OF '{before}'")
    with pytest.raises(UsageError, match="items has no version 7: its latest is v3"):
        query(copy, "SELECT count(*) FROM items VERSION AS OF 7")
    with pytest.raises(UsageError, match="items has no version 9"):
        query(copy, "SELECT count(*) FROM items", as_of={"items": 9})


def test_version_at_is_the_brute_force_answer_at_every_time(tmp_path):
    """The binary search over the log's commit times against the newest commit at or before
    each time, on 13 commits (each boundary, each gap, after the last)."""
    lh = str(tmp_path / "lh")
    for v in range(13):
        delta.append_arrow(lh, ITEMS, items(1, f"b{v}-"))
    commits = delta.history(lh, ITEMS, counts=False)
    times = sorted({c.at for c in commits})
    probes = [*times, *(t + dt.timedelta(microseconds=500) for t in times)]
    for t in probes:
        brute = max(c.version for c in commits if c.at <= t)
        assert delta.version_at(lh, ITEMS, t) == brute, t
    with pytest.raises(UsageError, match="first commit, v0"):
        delta.version_at(lh, ITEMS, times[0] - dt.timedelta(seconds=1))


def test_time_travel_is_read_from_the_query_tokens_not_its_text(versions):
    lh, _ = versions
    sql = ("SELECT 'items VERSION AS OF 1' AS s, count(*) FROM \"items\" version as of 1 "
           "-- items VERSION AS OF 2\n")
    out, views = rewrite(sql, lh)
    assert views == {"items__v1": ("items", 1)}
    assert out.startswith("SELECT 'items VERSION AS OF 1' AS s, count(*) FROM items__v1 ")
    assert out.endswith("-- items VERSION AS OF 2\n")
    assert query(lh, sql)[1] == [("items VERSION AS OF 1", 1)]
    with pytest.raises(UsageError, match="wants a number or a quoted timestamp"):
        rewrite("SELECT * FROM items VERSION AS OF x", lh)


def test_a_cut_table_output_says_so(versions):
    lh, _ = versions
    r = lakerec("sql", "--lakehouse", lh, "--max-rows", "2", "SELECT * FROM items")
    assert r.returncode == 0 and "(2 rows)" in r.stdout
    assert "output cut at 2 rows" in r.stderr
    r = lakerec("sql", "--lakehouse", lh, "--max-rows", "3", "SELECT * FROM items")
    assert r.returncode == 0 and "cut" not in r.stderr


@pytest.mark.parametrize("command", [["score"], ["train"], ["check"], ["sql", "select 1"],
                                     ["embed"], ["restore", "items", "--version", "0"],
                                     ["status"], ["report"], ["history", "items"]])
def test_a_folder_that_is_not_a_lakehouse_is_refused_and_left_alone(tmp_path, command):
    """A system folder, a folder with no lakerec table in it, or a lakehouse without the table
    the command reads: exit 2, one line, nothing written there (no ``mlflow.db``)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "half" / "landing").mkdir(parents=True)
    etc_before = sorted(os.listdir("/etc"))
    cases = [("/etc", "is a system folder"), (str(empty), "is not a lakehouse")]
    if command[0] in ("score", "train", "embed"):
        cases.append((str(tmp_path / "half"), "has no table"))
    for root, message in cases:
        before = sorted(os.walk(root)) if root != "/etc" else None
        r = lakerec(*command, "--lakehouse", root)
        assert r.returncode == 2, (root, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        if before is not None:
            assert sorted(os.walk(root)) == before
    assert sorted(os.listdir("/etc")) == etc_before


def test_history_lists_the_commits_with_what_the_job_recorded(versions):
    lh, at = versions
    r = lakerec("history", "items", "--lakehouse", lh, "--format", "json")
    assert r.returncode == 0, r.stderr
    import json

    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [g["version"] for g in got] == [3, 2, 1, 0]
    assert got[0]["committed_at"] == at[3].isoformat(timespec="milliseconds")
    assert got[0]["rows_added"] == 1 and got[0]["files_added"] == 1
    r = lakerec("history", "recommendations", "--lakehouse", lh)
    assert r.returncode == 2 and "has no table recommendations" in r.stderr


def _age_removes(path: str, version: int, hours: float) -> None:
    """Make the files removed by commit ``version`` look removed ``hours`` ago: vacuum judges
    a file by its remove action's deletionTimestamp (time passing, without waiting a day)."""
    import json

    f = os.path.join(path, "_delta_log", f"{version:020d}.json")
    with open(f) as fh:
        actions = [json.loads(line) for line in fh if line.strip()]
    old = int((time.time() - hours * 3600) * 1000)
    for a in actions:
        if "remove" in a:
            a["remove"]["deletionTimestamp"] = old
    with open(f, "w") as fh:
        fh.write("".join(json.dumps(a) + "\n" for a in actions))


def test_vacuum_keeps_every_version_inside_the_retention(tmp_path):
    from pipelines.storage.maintenance import upkeep

    lh = str(tmp_path / "lh")
    for v in range(1, 4):  # v1, v2, v3: each replaces the one before
        overwrite(lh, ITEMS, items(v, f"v{v}-"))
    path = delta.table_path(lh, ITEMS)
    _age_removes(path, 2, hours=48)  # v1's file was replaced two days ago, v2's just now
    with pytest.raises(UsageError, match="too short"):
        upkeep(lh, "items", retention_hours=1)
    dry = upkeep(lh, "items", retention_hours=24, dry_run=True)
    assert dry.files_deleted == 1 and count(lh, "SELECT count(*) FROM items VERSION AS OF 1") == 1
    u = upkeep(lh, "items", retention_hours=24)
    # the vacuum's own commits (v4, v5) come before the checkpoint
    assert u.files_deleted == 1 and u.version == u.checkpoint == 5
    assert any(n.startswith(f"{5:020d}.checkpoint") for n in os.listdir(
        os.path.join(path, "_delta_log")))
    # inside the retention: readable; the latest: unchanged
    assert count(lh, "SELECT count(*) FROM items VERSION AS OF 2") == 2
    assert count(lh, "SELECT count(*) FROM items") == 3
    with pytest.raises(delta.BrokenTableError):  # outside it: its file is gone, and it says so
        count(lh, "SELECT count(*) FROM items VERSION AS OF 1")
    again = upkeep(lh, "items", retention_hours=24)
    assert again.files_deleted == 0 and again.checkpoint is None
    assert delta.latest_version(lh, ITEMS) == again.version  # a no-op commits nothing


def test_a_bad_write_of_recommendations_is_found_and_restored(tmp_path):
    """Disaster recovery as an operator does it: the gate fails, history names the bad
    commit, restore brings the good version back, the gate passes."""
    from schemas.tables import INTERACTIONS, LIST_LENGTH_KEY, RECOMMENDATIONS

    lh = str(tmp_path / "lh")
    now = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    delta.append_arrow(lh, INTERACTIONS, pa.Table.from_pylist([
        {"event_id": f"e{u}", "user_id": f"u{u}", "item_id": "i0", "event_type": "view",
         "value": None, "ts": now, "session_id": None, "source": None, "ingest_source": "t",
         "ingest_id": "t", "ingested_at": now, "dt": now.date()} for u in range(3)],
        schema=INTERACTIONS.arrow_schema()))

    def recs(item_of):
        return pa.Table.from_pylist([
            {"user_id": f"u{u}", "rank": r, "item_id": item_of(u, r), "score": 1.0 / r,
             "source": "als", "model_version": 1, "generated_at": now}
            for u in range(3) for r in (1, 2)], schema=RECOMMENDATIONS.arrow_schema())

    good = overwrite(lh, RECOMMENDATIONS, recs(lambda u, r: f"i{r}"), **{LIST_LENGTH_KEY: 2})
    bad = overwrite(lh, RECOMMENDATIONS, recs(lambda u, r: "i0"), **{LIST_LENGTH_KEY: 2})
    r = lakerec("check", "--lakehouse", lh)
    assert r.returncode == 1 and "FAIL no seen item recommended" in r.stdout
    assert "lists of K = 2" in r.stdout  # K read from what the writer recorded
    r = lakerec("history", "recommendations", "--lakehouse", lh, "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith(f"{bad.version},")
    r = lakerec("restore", "recommendations", "--version", str(good.version), "--lakehouse", lh)
    assert r.returncode == 0, r.stderr
    r = lakerec("check", "--lakehouse", lh)
    assert r.returncode == 0 and "quality gate: passed" in r.stdout, r.stdout


def test_a_copied_landing_zone_is_the_same_input(tmp_path):
    """The ingest fingerprint is by content: new paths and modification times (a copied or
    moved lakehouse) are the same input; a changed byte is a new one."""
    from pipelines.storage import landing

    src = tmp_path / "a" / "dt=2024-05-01"
    src.mkdir(parents=True)
    (src / "x.jsonl").write_text('{"event_id": "e1"}\n')
    (src / "y.jsonl").write_text('{"event_id": "e2"}\n')
    cache = landing.ContentHashes(str(tmp_path / "lh"))
    first = landing.fingerprint(landing.list_files(str(src)), "rules", hashes=cache)
    dst = tmp_path / "b" / "dt=2024-05-01"
    shutil.copytree(src, dst, copy_function=shutil.copy)  # new paths, new times
    os.utime(dst / "x.jsonl", (1, 1))
    assert landing.fingerprint(landing.list_files(str(dst)), "rules", hashes=cache) == first
    assert landing.fingerprint(landing.list_files(str(dst)), "rules") == first  # no cache
    (dst / "x.jsonl").write_text('{"event_id": "e3"}\n')  # same size, other content
    assert landing.fingerprint(landing.list_files(str(dst)), "rules", hashes=cache) != first
    cache.close()


def test_a_copied_lakehouse_writes_its_mlflow_artifacts_inside_itself(tmp_path):
    """MLflow records absolute artifact locations: a copy must not log into the original."""
    import mlflow

    from pipelines.storage import tracking

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    with mlflow.start_run(experiment_id=tracking.experiment_id(str(a))) as run:
        mlflow.log_dict({"x": 1}, "first.json")
    shutil.copytree(a, b)
    before = sorted(os.walk(a))
    exp = tracking.experiment_id(str(b))  # opening the copy's store relocates it
    assert tracking.client(str(b)).get_experiment(exp).artifact_location == \
        f"file://{b}/mlartifacts"
    with mlflow.start_run(experiment_id=exp) as second:
        mlflow.log_dict({"y": 2}, "second.json")
    assert sorted(os.walk(a)) == before  # nothing written into the original
    c = tracking.client(str(b))
    for r in (run, second):
        uri = c.get_run(r.info.run_id).info.artifact_uri
        assert uri.startswith(f"file://{b}/mlartifacts/"), uri
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/first.json") == {"x": 1}
    assert tracking.relocate(str(b)) is None  # done once


def test_status_reports_and_check_fails_on_a_breached_alert(tmp_path):
    import json

    from pipelines.ops.status import Thresholds
    from pipelines.runtime.config import CONFIG_KEYS
    from schemas.tables import INTERACTIONS, LIST_LENGTH_KEY, QUARANTINE, RECOMMENDATIONS

    assert set(Thresholds.names()) == CONFIG_KEYS["status"] - CONFIG_KEYS["stream"]
    lh = str(tmp_path / "lh")
    now = dt.datetime.now(dt.UTC)
    day = dt.date(2024, 5, 1)
    delta.append_arrow(lh, INTERACTIONS, pa.Table.from_pylist([
        {"event_id": f"e{u}", "user_id": f"u{u}", "item_id": "i0", "event_type": "view",
         "value": None, "ts": now, "session_id": None, "source": None, "ingest_source": "t",
         "ingest_id": "ingest:2024-05-01:x", "ingested_at": now, "dt": day}
        for u in range(9)], schema=INTERACTIONS.arrow_schema()))
    delta.append_arrow(lh, QUARANTINE, pa.Table.from_pylist([
        {"raw": "{", "raw_bytes": None, "raw_size": 1, "reason": "malformed_json",
         "event_id": None, "ingest_source": "t", "ingest_id": "x", "quarantined_at": now,
         "origin": "events", "dt": day}], schema=QUARANTINE.arrow_schema()))
    delta.append_arrow(lh, ITEMS, items(4, "i"))
    recs = pa.Table.from_pylist([
        {"user_id": f"u{u}", "rank": 1, "item_id": "i1", "score": 1.0,
         "source": "popular" if u < 3 else "als", "model_version": 1, "generated_at": now}
        for u in range(9)], schema=RECOMMENDATIONS.arrow_schema())
    overwrite(lh, RECOMMENDATIONS, recs, **{LIST_LENGTH_KEY: 1})
    r = lakerec("status", "--lakehouse", lh, "--check", "--format", "json",
                "--max-quarantine-rate", "0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert st["quarantine"]["day"] == "2024-05-01" and st["quarantine"]["rows"] == 10
    assert st["quarantine"]["rate"] == pytest.approx(0.1)
    assert st["lists"]["fallback_share"] == pytest.approx(1 / 3)
    assert st["lists"]["coverage"] == pytest.approx(1 / 4)
    assert {t["table"] for t in st["tables"]} == {"interactions", "quarantine", "items",
                                                  "recommendations"}
    assert not any(a["breached"] for a in st["alerts"])
    # 10% quarantined is over the default limit (5%): --check fails, saying why
    r = lakerec("status", "--lakehouse", lh, "--check")
    assert r.returncode == 1 and "FIRING quarantine_rate" in r.stdout
    assert "1 alert(s) firing: 10.0% of 2024-05-01's rows quarantined" in r.stderr
    # thresholds from lakerec.toml too
    (tmp_path / "lakerec.toml").write_text("[status]\nmax_quarantine_rate = 0.5\n"
                                           "max_fallback_share = 0.2\n")
    r = lakerec("status", "--lakehouse", lh, "--check",
                LAKEREC_CONFIG=str(tmp_path / "lakerec.toml"))
    assert r.returncode == 1 and "FIRING fallback_share" in r.stdout, r.stdout
    assert "quarantine_rate" not in r.stderr
