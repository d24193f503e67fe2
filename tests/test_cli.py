"""The command line as a user meets it: usage errors are one line, exit 2, and write nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import VENV_BIN, job_env


def lakerec(*args, cwd=None, env=None):
    return subprocess.run([str(VENV_BIN / "lakerec"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env or job_env(), timeout=300)


def snapshot(root):
    """Every folder and file under ``root`` (what "nothing written" is checked against)."""
    return sorted((p, tuple(sorted(fs))) for p, _, fs in os.walk(root))


@pytest.fixture
def landed(tmp_path):
    lh = tmp_path / "lh"
    part = lh / "landing" / "events" / "dt=2024-05-01"
    part.mkdir(parents=True)
    (part / "a.jsonl").write_text('{"event_id":"e1"}\n')
    return lh


@pytest.mark.parametrize("args, message", [
    (["ingest", "--date", "2024-05-40"], "not a date"),
    (["ingest", "--date", "20240501"], "not a date"),
    (["ingest", "--date", "2024-05-02"], "no input partition"),
    (["ingest", "--date", "2024-05-01", "--bogus"], "unrecognized arguments: --bogus"),
    (["generate", "--out", "/tmp/elsewhere-lakerec"], "outside the lakehouse"),
    (["generate", "--dirty-fraction", "2"], "bad value for dirty_fraction"),
    (["generate", "--users", "-5"], "bad value for users"),
    (["train", "--window-days", "3", "--holdout-days", "3"], "smaller than --window-days"),
    (["train", "--weights", "view"], "bad value for weights"),
    (["score", "--k", "zero"], "bad value for k"),
    (["sql", "--as-of", "interactions", "select 1"], "TABLE=VERSION"),
    (["import-movielens", "/no/such/folder"], "no such file or folder"),
])
def test_usage_errors(landed, args, message):
    before = snapshot(landed)
    r = lakerec(*args, "--lakehouse", str(landed))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("lakerec ")
    assert snapshot(landed) == before


def test_unknown_command_and_help():
    r = lakerec("frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = lakerec("--help")
    assert r.returncode == 0 and "ingest" in r.stdout and "score" in r.stdout
    r = lakerec("ingest", "--help")
    assert r.returncode == 0 and "--date" in r.stdout


def test_environment_and_toml_settings(tmp_path):
    """Flags > LAKEREC_* > lakerec.toml > defaults, on the lakehouse path."""
    (tmp_path / "lakerec.toml").write_text(f'lakehouse = "{tmp_path / "from-toml"}"\n')
    env = job_env(LAKEREC_CONFIG=str(tmp_path / "lakerec.toml"))
    r = lakerec("ingest", "--date", "2024-05-01", env=env, cwd=tmp_path)
    assert str(tmp_path / "from-toml") in r.stderr
    env["LAKEREC_LAKEHOUSE"] = str(tmp_path / "from-env")
    r = lakerec("ingest", "--date", "2024-05-01", env=env, cwd=tmp_path)
    assert str(tmp_path / "from-env") in r.stderr
    r = lakerec("ingest", "--date", "2024-05-01", "--lakehouse", str(tmp_path / "flag"),
                env=env, cwd=tmp_path)
    assert str(tmp_path / "flag") in r.stderr


def test_sql_errors_are_one_line(tmp_path):
    r = lakerec("sql", "--lakehouse", str(tmp_path), "select * from read_csv('/etc/passwd')")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = lakerec("sql", "--lakehouse", str(tmp_path), "selec 1")
    assert r.returncode == 2 and "syntax error" in r.stderr
