"""The package's shape: which module may import which, light commands without TensorFlow, and
the option table (docs/options.md) read from the option declarations."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dogbreeds
from dogbreeds.config import TrainConfig
from dogbreeds.options import option_table

PACKAGE = Path(dogbreeds.__file__).parent
README = PACKAGE.parent / "README.md"
OPTIONS_PAGE = PACKAGE.parent / "docs" / "options.md"

# Lowest first: a module imports only from layers below its own (docs/design.md draws them).
# `cifar` is a subpackage, one node here: its modules are checked together.
LAYERS = [
    {"errors", "metrics", "synthetic"},
    {"files", "options", "calibration", "places", "images", "progress"},
    {"settings", "hub", "kaggle_api"},
    {"config", "competition", "runs", "models", "distribute", "augmentation"},
    {"pipeline"},
    {"report", "cache", "tracking"},
    {"heads", "inference", "loop"},  # below the jobs: they take small settings, never the whole config
    {"training", "submission", "scoring", "explain"},  # the jobs: a run, a submission, a score, heat maps
    {"evaluation", "prediction", "listing", "bench", "cifar", "demo", "blending", "exporting"},  # commands, siblings
    {"cli"},
    {"__main__"},
]
JOBS = LAYERS.index({"training", "submission", "scoring", "explain"})
PREDICTION_SIDE = {
    "submission", "evaluation", "prediction", "exporting", "inference", "metrics", "calibration", "report", "scoring",
    "explain",
}  # fmt: skip


def sources(module: str) -> list[Path]:
    """The files of a module, or of every module of a subpackage."""
    folder = PACKAGE / module
    return sorted(folder.glob("*.py")) if folder.is_dir() else [PACKAGE / f"{module}.py"]


def imports_of(module: str) -> set[str]:
    """The package's modules (and subpackages) that `module` imports, at the top or inside functions."""
    found = set()
    for source in sources(module):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dogbreeds":
                found |= {alias.name for alias in node.names if alias.name != "__version__"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dogbreeds."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dogbreeds.")}
    return found - {module}


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def modules() -> set[str]:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} | subpackages


def test_every_module_has_a_layer_and_imports_only_from_below():
    assert modules() == set().union(*LAYERS)
    wrong = [(m, i) for m in sorted(modules()) for i in sorted(imports_of(m)) if layer_of(i) >= layer_of(m)]
    assert not wrong, f"imports from the same layer or above: {wrong}"


def names_in(module: str) -> set[str]:
    """Every name the module's code uses or imports (docstrings and comments aside)."""
    found = set()
    for source in sources(module):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.alias):
                found.add(node.name)
    return found


def test_below_the_jobs_no_module_takes_the_whole_configuration():
    below = [m for m in modules() if layer_of(m) < JOBS and m != "config"]
    naming = [m for m in below if "TrainConfig" in names_in(m)]
    assert not naming, f"modules below the jobs that name TrainConfig: {naming}"


def test_the_cifar_package_is_imported_by_the_command_line_only():
    assert [m for m in sorted(modules()) if "cifar" in imports_of(m)] == ["cli"]


def test_no_prediction_side_module_reaches_the_training_module():
    for module in PREDICTION_SIDE:
        seen, todo = set(), [module]
        while todo:
            for imported in imports_of(todo.pop()) - seen:
                seen.add(imported)
                todo.append(imported)
        assert "training" not in seen, module


LIGHT = """
import sys
from typer.testing import CliRunner
from dogbreeds.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print("tensorflow" in sys.modules, "keras" in sys.modules, "keras_hub" in sys.modules)
"""


def test_score_and_runs_answer_without_importing_tensorflow_or_keras_hub(tmp_path):
    (tmp_path / "s.csv").write_text("id,a,b\nx,0.9,0.1\ny,0.2,0.8\n")
    (tmp_path / "key.csv").write_text("id,breed\nx,a\ny,b\n")
    for args in (["score", tmp_path / "s.csv", "--solution", tmp_path / "key.csv"], ["runs", "--dir", tmp_path]):
        result = subprocess.run([sys.executable, "-c", LIGHT, *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["False", "False", "False"], args


def test_the_option_table_is_the_declared_one_and_the_readme_a_guide():
    text = OPTIONS_PAGE.read_text()
    start, end = "<!-- options:train -->\n", "<!-- /options:train -->"
    table = text[text.index(start) + len(start) : text.index(end)].strip()
    assert table == option_table(TrainConfig), "regenerate it with python benchmarks/write_options.py"
    readme = README.read_text()
    assert "../shared" not in readme  # users have no such folder
    assert len(readme.splitlines()) <= 300
