"""The layering of the library, and the wall between it and the pipeline that drives it.

`LAYERS` is the order of `xai/`'s parts, bottom to top (docs/development.md argues it): a module
imports only from its own part or the parts below it, and inside a subpackage its modules import
each other without a cycle. `xai/__init__.py` (the public API, imported lazily) stands above all.

Only `xai/pipeline/` (and the stage scripts) may import MLflow, DVC or YAML, read DVC's environment
variables, or name params.yaml and its keys; library code names its settings by field name and
the pipeline turns them into keys (`xai.pipeline.config.param_error`).
"""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "xai" / "pipeline"
FORBIDDEN_IMPORTS = ("mlflow", "dvc", "yaml", "xai.pipeline")

#: The library's parts, bottom to top: the ground (errors, settings, files, devices, tensor helpers,
#: chunk geometry), then data, architectures, training loops, explanations (an amortised
#: explainer's `fit` trains, so explain sits above train), their evaluation, figures, and the
#: pipeline, the only part that knows DVC, MLflow and params.yaml.
LAYERS = ("xai.errors", "xai.settings", "xai.io", "xai.devices", "xai.tensors", "xai.chunks",
          "xai.data", "xai.models", "xai.train", "xai.explain", "xai.evaluation", "xai.viz",
          "xai.pipeline")


def _module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the part `module` belongs to."""
    for index, part in enumerate(LAYERS):
        if module == part or module.startswith(part + "."):
            return index
    raise AssertionError(f"{module} belongs to no layer of LAYERS: add it where it belongs")


def _xai_imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import of an `xai` module, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("xai")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if module == "xai" or module.startswith("xai."):
                subs = [f"{module}.{a.name}" for a in node.names
                        if (ROOT / f"{module}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()]
                found += [(node.lineno, m) for m in subs] or [(node.lineno, module)]
    return found


def layer_violations(path: Path, root: Path = ROOT) -> list[str]:
    """Imports in `path` that run against `LAYERS` (upwards, to a higher part)."""
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    mine = layer_of(me)
    return [f"line {line}: {me} ({LAYERS[mine]}) imports {module} ({LAYERS[layer_of(module)]})"
            for line, module in _xai_imports(ast.parse(path.read_text()), package)
            if layer_of(module) > mine]


def _layered_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "xai").rglob("*.py") if p != ROOT / "xai" / "__init__.py")


def _library_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "xai").rglob("*.py") if PIPELINE not in p.parents)


def _param_keys() -> set[str]:
    """Every dotted key of params.yaml with at least one dot (`vibi.k`, `invertible.image.lr`)."""
    keys: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                key = f"{prefix}.{name}" if prefix else str(name)
                if prefix:
                    keys.add(key)
                walk(value, key)

    walk(yaml.safe_load((ROOT / "params.yaml").read_text()), "")
    return keys


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _violations(path: Path, keys: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    key_pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(keys))) + r")\b")
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        for name in names:
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS):
                found.append(f"line {node.lineno}: imports {name}")
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            text = node.value
            if "params.yaml" in text or text.startswith("DVC_"):
                found.append(f"line {node.lineno}: {text!r}")
            elif match := key_pattern.search(text):
                found.append(f"line {node.lineno}: names the param key {match.group(0)!r}")
    return found


def test_the_library_knows_nothing_of_mlflow_dvc_or_params():
    keys = _param_keys()
    assert {"vibi.k", "data.folder", "invertible.image.lr"} <= keys
    modules = _library_modules()
    assert len(modules) > 20 and not any(PIPELINE in p.parents for p in modules)
    problems = {str(p.relative_to(ROOT)): v for p in modules if (v := _violations(p, keys))}
    assert not problems, problems


def test_the_check_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docstrings may say params.yaml and vibi.k."""\nimport mlflow\n'
                   'import os\nos.environ["DVC_ROOT"]\nraise ValueError("vibi.k = 3 is bad")\n'
                   'from xai.pipeline.config import load_config\n')
    assert len(_violations(bad, _param_keys())) == 4


def test_no_import_runs_against_the_layer_order():
    modules = _layered_modules()
    assert len(modules) > 30
    problems = [v for p in modules for v in layer_violations(p)]
    assert not problems, "\n".join(problems)


def test_modules_of_one_part_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for path in _layered_modules():
        me = _module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        graph[me] = {m for _, m in _xai_imports(ast.parse(path.read_text()), package)
                     if layer_of(m) == layer_of(me) and m != me}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """A model that imports the training loop (as models/blackbox.py once did) is refused; the
    same import from a training module passes."""
    source = "from xai.train.loop import History\nfrom xai.tensors import predict\n"
    for folder, upward in (("models", 1), ("train", 0), ("evaluation", 0)):
        path = tmp_path / "xai" / folder / "bad.py"
        path.parent.mkdir(parents=True)
        path.write_text(source)
        assert len(layer_violations(path, tmp_path)) == upward, folder
    lazy = tmp_path / "xai" / "data" / "lazy.py"
    lazy.parent.mkdir(parents=True)
    lazy.write_text("def f():\n    from xai.explain import boundary\n    return boundary\n")
    assert layer_violations(lazy, tmp_path) == [
        "line 2: xai.data.lazy (xai.data) imports xai.explain.boundary (xai.explain)"]
