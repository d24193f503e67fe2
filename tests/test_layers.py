"""The package's layers: imports only point down (the rule of docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# lowest first; a module may import its own layer and any layer before it
LAYERS = ("errors", "model", "serving", "storage", "online", "batch", "streaming", "api",
          "ops", "dev", "runtime")


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "schemas":
        return "errors"  # the contracts sit with the bottom layer: they import nothing of ours
    if parts[0] != "pipelines" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def imports(path: Path) -> set[str]:
    """Every ``pipelines``/``schemas`` module a file imports, lazily inside functions too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("pipelines", "schemas")}


def test_every_module_of_pipelines_lives_in_a_layer():
    loose = [p.name for p in (ROOT / "pipelines").glob("*.py")
             if p.name not in ("__init__.py", "errors.py")]
    assert loose == []
    folders = {p.name for p in (ROOT / "pipelines").iterdir()
               if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS) - {"errors"}


def test_imports_only_point_down():
    bad = []
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = layer_of(mod) or "errors"
        for target in imports(path):
            layer = layer_of(target)
            if layer is not None and LAYERS.index(layer) > LAYERS.index(own):
                bad.append(f"{mod} ({own}) imports {target} ({layer})")
    assert bad == []


def test_schemas_import_nothing_of_the_package():
    for path in (ROOT / "schemas").glob("*.py"):
        assert not [m for m in imports(path) if m.startswith("pipelines")], path


def test_the_model_layer_needs_no_spark():
    for path in (ROOT / "pipelines" / "model").glob("*.py"):
        assert "pyspark" not in path.read_text().replace("pyspark's", ""), path


def test_the_code_explains_itself():
    """No pointers to documents outside the repository."""
    for path in [*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("jobs/*.py"),
                 *ROOT.glob("schemas/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]:
        assert "SPEC" not in path.read_text(), path
