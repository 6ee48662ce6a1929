"""The layering: the library under `xai/` knows nothing of the pipeline that drives it.

Only `xai/pipeline/` (and the stage scripts) may import MLflow, DVC or YAML, read DVC's environment
variables, or name params.yaml and its keys; library code names its settings by field name and
the pipeline turns them into keys (`xai.pipeline.config.param_error`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "xai" / "pipeline"
FORBIDDEN_IMPORTS = ("mlflow", "dvc", "yaml", "xai.pipeline")


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
