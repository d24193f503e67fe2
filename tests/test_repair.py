"""A damaged table fails only what reads it, names itself, and ``doctor`` + ``restore`` bring
it back: a truncated last commit of ``recommendations``, a deleted data file of
``interactions`` (real Delta tables, the real CLI)."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import subprocess
from urllib.parse import unquote

import pyarrow as pa
import pytest

from pipelines.errors import DataError
from pipelines.storage import delta
from pipelines.storage.repair import check_table, restore
from schemas.tables import INTERACTIONS, RECOMMENDATIONS
from tests.conftest import VENV_BIN, job_env

NOW = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def lakerec(*args):
    return subprocess.run([str(VENV_BIN / "lakerec"), *args], capture_output=True, text=True,
                          env=job_env(), timeout=120)


def rows(spec, n, tag):
    data = {
        "interactions": lambda j: {
            "event_id": f"{tag}-{j}", "user_id": f"u{j}", "item_id": "i1", "event_type": "view",
            "value": None, "ts": NOW, "session_id": None, "source": None,
            "ingest_source": "test", "ingest_id": tag, "ingested_at": NOW,
            "dt": dt.date(2024, 5, 1 + int(tag[-1]))},
        "recommendations": lambda j: {
            "user_id": f"u{j}", "rank": 1, "item_id": f"i{tag}", "score": 1.0,
            "source": "model", "model_version": 1, "generated_at": NOW},
    }[spec.name]
    return pa.Table.from_pylist([data(j) for j in range(n)], schema=spec.arrow_schema())


@pytest.fixture
def lakehouse(tmp_path):
    lh = str(tmp_path / "lh")
    for v in range(3):  # versions 1, 2, 3 after the creation at 0
        delta.append_arrow(lh, INTERACTIONS, rows(INTERACTIONS, 2, f"e{v}"),
                           txn=delta.Txn.batch("lakerec.stream/test", v))
        delta.append_arrow(lh, RECOMMENDATIONS, rows(RECOMMENDATIONS, 2, f"r{v}"))
    return lh


def count(lh, table):
    r = lakerec("sql", "--lakehouse", lh, "--format", "csv", f"SELECT count(*) FROM {table}")
    return r.returncode, r.stdout.strip().splitlines()[-1] if r.stdout else r.stderr.strip()


def test_a_truncated_commit_fails_only_its_table_and_restore_recovers_it(lakehouse):
    lh = lakehouse
    last = os.path.join(lh, "recommendations", "_delta_log", f"{3:020d}.json")
    text = pathlib.Path(last).read_text()
    pathlib.Path(last).write_text(text[: len(text) // 2])
    assert count(lh, "interactions") == (0, "6")  # other tables are unaffected
    code, err = count(lh, "recommendations")
    assert code == 1 and "table recommendations cannot be read" in err
    assert len(err.splitlines()) == 2 and "lakerec doctor" in err  # the line + the hint
    assert count(lh, "recommendations VERSION AS OF 2") == (0, "4")  # intact versions read
    r = lakerec("check", "--lakehouse", lh)
    assert r.returncode == 1 and "table recommendations cannot be read" in r.stderr
    r = lakerec("doctor", "--lakehouse", lh)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ok      interactions" in r.stdout and "BROKEN  recommendations" in r.stdout
    fix = "lakerec restore recommendations --version 2"
    assert fix in r.stdout
    r = lakerec(*fix.split()[1:], "--lakehouse", lh)
    assert r.returncode == 0 and "set aside 1 damaged log files" in r.stdout, r.stderr
    assert lakerec("doctor", "--lakehouse", lh).returncode == 0
    assert count(lh, "recommendations") == (0, "4")
    aside = os.listdir(os.path.join(lh, "recommendations", "_lakerec_damaged"))
    assert len(aside) == 1  # kept, not deleted
    # the table takes writes again
    delta.append_arrow(lh, RECOMMENDATIONS, rows(RECOMMENDATIONS, 2, "r9"))
    assert count(lh, "recommendations") == (0, "6")


def test_a_missing_data_file_is_named_and_restored_from_history(lakehouse):
    lh = lakehouse
    dt_ = delta.open_table(lh, INTERACTIONS)
    newest = next(a for a in delta.add_actions(dt_) if a["partition"]["dt"] == "2024-05-03")
    os.remove(os.path.join(lh, "interactions", unquote(newest["path"])))
    code, err = count(lh, "interactions")
    assert code == 1 and "table interactions cannot be read" in err, err
    assert count(lh, "recommendations") == (0, "6")
    h = check_table(lh, "interactions")
    assert not h.ok and "1 of 3 data files missing" in h.problem and h.restore_to == 2
    with pytest.raises(DataError, match="missing data files"):
        restore(lh, "interactions", 3)  # the damaged version itself: refused
    r = lakerec("doctor", "--lakehouse", lh)
    assert r.returncode == 1 and "lakerec restore interactions --version 2" in r.stdout
    r = lakerec("restore", "interactions", "--version", "2", "--lakehouse", lh)
    assert r.returncode == 0 and "restored to v2 (new version v5)" in r.stdout  # restore + txn reset, r.stderr
    assert count(lh, "interactions") == (0, "4")
    assert check_table(lh, "interactions").ok
    # what the table records as done went back with it: batch 2 is to be written again
    after = delta.open_table(lh, INTERACTIONS)
    assert after.transaction_version("lakerec.stream/test") == 1
    assert not delta.Txn.batch("lakerec.stream/test", 2).done_in(after)


def test_restore_refuses_what_it_cannot_do(lakehouse):
    lh = lakehouse
    for args, code, text in [
        (["restore", "bogus", "--version", "1"], 2, "invalid choice"),
        (["restore", "interactions", "--version", "9"], 2, "has no version 9"),
        (["restore", "interactions", "--version", "-1"], 2, "--version"),
        (["doctor", "--lakehouse", "/no/such/lakehouse"], 2, "no lakehouse at"),
    ]:
        r = lakerec(*args, *(["--lakehouse", lh] if "--lakehouse" not in args else []))
        assert r.returncode == code and text in r.stderr, (args, r.stderr)
