"""lakerec package: build what spark-submit needs on a cluster.

    lakerec package [--out dist] [--no-env]

Writes dist/lakerec_pipelines.zip (--py-files) and dist/lakerec_env.tar.gz (--archives, a
venv-pack'ed environment with the native dependencies, without pyspark). See README, "Running
on a cluster".
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli


@dataclass(frozen=True)
class PackageConfig:
    out: str
    env: bool
    log_level: str | None


def parse(argv: list[str] | None) -> PackageConfig:
    p = cli.ArgumentParser(prog="lakerec package", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="dist", help="output folder (dist)")
    p.add_argument("--no-env", action="store_true", help="only the --py-files zip")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
    a = p.parse_args(argv)
    from pipelines.runtime.config import refuse_system_folder

    return PackageConfig(refuse_system_folder(a.out, "--out"), not a.no_env, a.log_level)


def body(_spark, cfg: PackageConfig) -> int:
    from pipelines.runtime import package

    with cli.step("package the code for --py-files"):
        print(f"    {package.build_zip(cfg.out)}")
    if cfg.env:
        with cli.step("pack the native dependencies for --archives (venv-pack)"):
            path = package.build_env(cfg.out, work_dir=os.path.join(cfg.out, "build"))
            print(f"    {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("package", argv, parse, body, spark=False)


if __name__ == "__main__":
    sys.exit(main())
