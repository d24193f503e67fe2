"""The README documents every command and every column the code has."""

from __future__ import annotations

import re

from jobs.cli import COMMANDS
from schemas.tables import TABLES
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_column_is_in_the_table_dictionary():
    section = README.split("## Tables", 1)[1].split("\n## ", 1)[0]
    for spec in TABLES.values():
        assert f"`{spec.name}`" in section, spec.name
        for col in spec.column_names:
            assert f"`{col}`" in section, f"{spec.name}.{col}"


def test_every_command_is_documented_with_its_job_script():
    for name, (module, _) in COMMANDS.items():
        assert f"lakerec {name}" in README, name
        assert (ROOT / "jobs" / f"{module.split('.')[1]}.py").exists()


def test_readme_commands_are_the_ci_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"```bash\n(make demo.*?)\n(make test.*?)\n```", README)
    assert setup, "the two set-up commands"
    assert "make test" in ci
