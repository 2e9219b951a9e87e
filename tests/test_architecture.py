"""The package's layers (README, "Code layout"): no module imports a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import modules of its own layer and of the layers below it. The
# README's layout table draws the same layers.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared pieces", ("afm_dist", "afm_dist.io", "afm_dist.metrics", "afm_dist.plots")),
    ("models", ("afm_dist.models",)),
    ("data contract", ("afm_dist.dataset", "afm_dist.schema", "afm_dist.model_dir", "afm_dist.batch")),
    ("input plan and readers", ("afm_dist.inputs", "afm_dist.loader", "afm_dist.petastorm_patch",
                                 "afm_dist.petastorm_compat")),
    ("spark layer", ("afm_dist.spark", "afm_dist.synthetic")),
    ("orchestration", ("afm_dist.preprocess", "afm_dist.training")),
    ("job runtime", ("afm_dist.cli",)),
    ("entry points", ("afm_dist.train", "afm_dist.search", "afm_dist.horovodrun", "jobs")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index into LAYERS of the most specific prefix that names ``module`` (or its package)."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def imported(path: Path) -> set[str]:
    """Every afm_dist module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # ``from afm_dist import io``
    return {n for n in names if n == "afm_dist" or n.startswith("afm_dist.")}


SOURCES = sorted([*(REPO / "afm_dist").rglob("*.py"), *(REPO / "jobs").glob("*.py")])


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in SOURCES if layer_of(module_name(p)) < 0]
    assert not unplaced, f"place these modules in a layer (tests/test_architecture.py and the README): {unplaced}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_above_it(path):
    own = layer_of(module_name(path))
    upward = sorted(f"{name} ({LAYERS[layer_of(name)][0]})" for name in imported(path)
                    if layer_of(name) > own and not module_name(path).startswith(name + "."))
    assert not upward, f"{module_name(path)} ({LAYERS[own][0]}) imports a layer above it: {upward}"


def test_the_walk_finds_an_upward_import(tmp_path):
    """The check itself can fail: a model module importing the trainer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from afm_dist.training.loop import train\n")
    assert {layer_of(n) for n in imported(bad)} == {layer_of("afm_dist.training")} != {layer_of("afm_dist.models")}
    assert layer_of("afm_dist.training.loop") > layer_of("afm_dist.models.afm")
