"""Every public name in `xai.__all__` has a runnable example in its own docstring, and it passes.

The examples are found on the object itself (`recurse=False`: a class's methods do not count) and
run with ELLIPSIS and NORMALIZE_WHITESPACE, each in fresh globals; the module-level example of
`xai.explain.vibi` (the README's VIBI quick start) runs too. The examples' tensors are tiny, so
they run on one CPU thread: intra-op threads only add overhead there, and on a busy machine
their spinning made `evaluate`'s example 40x slower.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import xai

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(examples: list[doctest.DocTest]) -> tuple[int, int, str]:
    """(attempted, failed, report) over `examples`; the report holds doctest's failure output."""
    out: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in examples:
        runner.run(test, out=out.append)
    results = runner.summarize(verbose=False)
    return results.attempted, results.failed, "".join(out)


def _examples(obj: object, name: str, module: object) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=False)
    return [t for t in finder.find(obj, name, module=module, globs={}) if t.examples]


@pytest.mark.parametrize("name", xai.__all__)
def test_public_name_has_a_passing_docstring_example(name: str) -> None:
    obj = getattr(xai, name)
    module = inspect.getmodule(obj) or importlib.import_module(xai._WHERE[name])
    examples = _examples(obj, f"xai.{name}", module)
    assert examples, f"xai.{name} has no example in its docstring"
    attempted, failed, report = _run(examples)
    assert attempted > 0
    assert failed == 0, f"xai.{name}: {failed} of {attempted} examples failed\n{report}"


def test_vibi_module_example_passes() -> None:
    module = importlib.import_module("xai.explain.vibi")
    examples = _examples(module, module.__name__, module)
    if not examples:
        pytest.skip("xai.explain.vibi has no module-level example")
    attempted, failed, report = _run(examples)
    assert failed == 0, f"{failed} of {attempted} examples failed\n{report}"
