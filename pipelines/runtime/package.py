"""What a cluster needs to run the jobs: the code as ``--py-files``, the native deps as ``--archives``.

* ``lakerec_pipelines.zip`` -- the ``pipelines``, ``schemas`` and ``jobs`` packages (with
  their data files), for ``spark-submit --py-files``;
* ``lakerec_env.tar.gz`` -- a relocatable virtual environment (``venv-pack``) holding the
  native dependencies (pyarrow, deltalake, numpy, numba, duckdb, mlflow ...) but not
  pyspark, which the cluster's Spark provides. Executors use it with
  ``--archives lakerec_env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``.

A venv-pack archive keeps the absolute path of the base interpreter it was built from:
nodes need the same Python at the same path (true of a node image built like this machine).
Where that does not hold, build the environment with conda-pack or ship a container image.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile

log = logging.getLogger(__name__)
PACKAGES = ("pipelines", "schemas", "jobs")


def source_root() -> str:
    import pipelines

    return os.path.dirname(os.path.dirname(os.path.abspath(pipelines.__file__)))


def build_zip(out_dir: str) -> str:
    """Zip the three packages (no caches) into ``out_dir``; atomic by rename."""
    root = source_root()
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, "lakerec_pipelines.zip")
    tmp = final + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in PACKAGES:
            for dirpath, dirs, files in os.walk(os.path.join(root, pkg)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith((".pyc", ".pyo")):
                        continue
                    path = os.path.join(dirpath, name)
                    z.write(path, os.path.relpath(path, root))
    os.replace(tmp, final)
    return final


def runtime_requirements() -> list[str]:
    """lakerec's install requirements, minus pyspark (the cluster brings its own Spark)."""
    reqs = []
    for r in importlib.metadata.requires("lakerec") or []:
        if "extra ==" in r:
            continue
        name = re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower()
        if name != "pyspark":
            reqs.append(r.split(";")[0].strip())
    return reqs


def build_env(out_dir: str, *, work_dir: str, python: str = sys.executable) -> str:
    """A fresh venv with the runtime requirements, packed with venv-pack."""
    venv = os.path.join(work_dir, "pack-venv")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip"]
    _run([*pip, "install", "--upgrade", "pip"])
    _run([*pip, "install", *runtime_requirements()])
    final = os.path.join(out_dir, "lakerec_env.tar.gz")
    tmp = os.path.join(out_dir, "lakerec_env.tmp.tar.gz")
    packer = shutil.which("venv-pack", path=os.path.dirname(sys.executable)) or "venv-pack"
    _run([packer, "-p", venv, "-o", tmp, "--force", "--quiet"])
    os.replace(tmp, final)
    return final


def _run(cmd: list[str]) -> None:
    """Run a build step quietly; on failure raise with the end of its output."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{tail}")
