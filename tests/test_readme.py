"""The documentation's results are the committed metrics: no number drifts from its file, every
block sits on one page, every link resolves, and the README stays short.

The pages are checked against `metrics/`, `experiments/` and `params.yaml` as git holds them at
HEAD, not as the workspace has them: a `dvc repro` on another CPU (no native bf16, say) moves
metrics in the third decimal, and that must not fail the suite.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.docs import (
    BLOCKS,
    CIFAR_RERUNS,
    SOURCES,
    drift,
    main,
    pages,
    placement,
    render,
    snapshot,
)

README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _copy_sources(dest: Path, root: Path = ROOT) -> Path:
    """The pages' sources as git holds them at HEAD, copied to `dest` (the workspace's outside a
    git checkout): a `dvc repro` on another kind of host rewrites the workspace's metrics and
    timings in their last digits, and the tests must read what the pages were made from."""
    if snapshot(dest, "HEAD", root) == dest:
        return dest
    for name in SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name)
        else:
            shutil.copy(root / name, dest / name)
    return dest


def test_every_page_matches_the_metrics_git_holds(tmp_path):
    source = snapshot(tmp_path, "HEAD")  # the workspace's files only outside a git checkout
    drifted = drift(pages(), source)
    assert not drifted, "results drifted from the committed metrics: " + ", ".join(
        f"{page} block {name}" for page, name in drifted) + "; run python tools/docs.py"


def test_every_block_is_on_exactly_one_page():
    where = placement(pages())
    assert set(where) == set(BLOCKS)
    assert where["stages"] == where["evaluation-headline"] == "README.md"
    assert where["evaluation"] == "docs/evaluation.md"
    assert where["reliability"] == "docs/reliability.md"


def test_a_changed_metric_changes_its_block(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "metrics" / "vibi.json"
    metrics = json.loads(path.read_text())
    metrics["posthoc_accuracy"] = 0.123456
    path.write_text(json.dumps(metrics))
    texts = pages()
    changed = render(texts, source)
    assert changed["README.md"] != texts["README.md"] and "0.1235" in changed["README.md"]
    assert drift(texts, source) == [("README.md", "stages"), ("README.md", "hosts")]


def test_a_missing_or_doubled_block_is_named():
    with pytest.raises(ValueError, match="results:stages"):
        render({"README.md": "no blocks here"})
    texts = pages()
    doubled = dict(texts, **{"docs/extra.md": texts["docs/reliability.md"]})
    with pytest.raises(ValueError, match="results:reliability is on several pages: "
                                         "docs/reliability.md, docs/extra.md"):
        placement(doubled)
    with pytest.raises(ValueError, match="unknown block"):
        placement(dict(texts, **{"docs/extra.md": "<!-- results:typo -->\n<!-- /results:typo -->\n"}))
    assert set(BLOCKS) == {"stages", "evaluation-headline", "evaluation", "reliability",
                           "vibi-variants", "bench", "vibi-variants-judged",
                           "counterfactual-sweep", "evaluation-encoding", "evaluation-cost",
                           "counterfactual-measures", "counterfactual-measures-sweep",
                           "counterfactual-measures-fashion", "scaling", "shared-cores", "hosts",
                           "bench-fp32", "bench-fp32-repeats", "cifar10-cost", "cifar10-run",
                           "cifar10-gains", "cifar10-limits", "cifar10-variants",
                           "serving-bench", "serving-answer"}


def _record(source: Path, name: str = "cifar10_cpu_pipeline.json") -> tuple[Path, dict]:
    path = source / "experiments" / name
    return path, json.loads(path.read_text())


def test_the_cifar10_run_block_follows_its_record(tmp_path):
    source = _copy_sources(tmp_path)
    path, run = _record(source)
    run["metrics"]["judge"]["test_agreement_k256"] = 0.876543
    run["metrics"]["evaluation_differences"]["random"]["fidelity_road_k64"]["ci_low"] = 0.0123456
    run["metrics"]["blackbox"]["test_accuracy"] = 0.987654
    run["metrics"]["evaluation"]["methods"]["vibi"]["posthoc_accuracy_road_k64"] = 0.654321
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar10-run"](source)
    assert "| 0.877 |" in changed and "+0.012" in changed and "0.9877" in changed
    columns = "| posthoc_accuracy_k64 | fidelity_k64 | posthoc_accuracy_road_k64 | fidelity_road_k64 |"
    assert columns in changed and "| 0.654 [" in changed and "fill `smooth`" in changed


def test_the_cifar10_gains_and_limits_follow_the_record(tmp_path):
    source = _copy_sources(tmp_path)
    path, run = _record(source)
    lime = run["metrics"]["evaluation"]["methods"]["lime"]
    lime.update({"fidelity_road_over_random_k64": 0.054321,
                 "fidelity_road_over_random_k64_ci_low": 0.01,
                 "fidelity_road_over_random_k64_ci_high": 0.09})
    run["metrics"]["evaluation"]["methods"]["occlusion"]["deletion_auc_road"] = 0.1
    path.write_text(json.dumps(run))
    assert "| lime | +0.054 [+0.010, +0.090] |" in BLOCKS["cifar10-gains"](source)
    limits = BLOCKS["cifar10-limits"](source)
    assert "are above random chunks with their whole interval (l2x, lime, vibi)" in limits
    assert "the best method, occlusion, 0.100" in limits and "no method beats it" not in limits


def test_the_cifar10_cost_block_counts_the_metrics_a_rerun_shares(tmp_path, monkeypatch):
    """A rerun of the command beside the record: its seconds, and how many metric values are
    equal to the bit; a value that moved lowers the count."""
    source = _copy_sources(tmp_path)
    _, record = _record(source)
    rerun = source / "experiments" / "rerun.json"
    rerun.write_text(json.dumps({**record, "total_seconds": 1234 * 60}))
    monkeypatch.setattr("tools.docs.CIFAR_RERUNS", ("experiments/rerun.json",))
    from tools.docs import cifar_cost_block, flatten

    values = len(flatten(record["metrics"]))
    block = cifar_cost_block(source)
    assert "| 1234.0 |" in block and f"of the {values} metric values both hold, {values} are equal" in block
    record["metrics"]["vibi"]["posthoc_accuracy"] = 0.5
    rerun.write_text(json.dumps(record))
    assert f"both hold, {values - 1} are equal" in cifar_cost_block(source)
    # a rerun cut short: its minutes so far, "-" for the stage and the metrics it did not reach
    del record["stage_seconds"]["evaluate"], record["metrics"]["vibi"]
    rerun.write_text(json.dumps({**record, "total_seconds": 99 * 60}))
    block = cifar_cost_block(source)
    assert "| 99.0 so far |" in block and block.splitlines()[3].endswith("| - |")
    assert "| VIBI post-hoc accuracy | 0.6616 | - |" in block


def test_the_cifar10_variants_table_has_one_row_per_run_with_what_it_changed(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar10_variants_pipelines.jsonl"
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    table = BLOCKS["cifar10-variants"](source)
    rows = [line for line in table.splitlines()[2:]]
    finished = [name for name in CIFAR_RERUNS  # a rerun cut short is in the cost block alone
                if "evaluation" in json.loads((source / name).read_text())["metrics"]]
    assert len(rows) == len(runs) + 1 + len(finished)
    assert rows[0].startswith("| cpu |") and "the first setting" in rows[0]
    assert "| jump |" in table and "vibi: jump_start True |" in table
    assert any(run.get("resumed") for run in runs) and "| resumed |" in table
    runs[1]["params"]["vibi"]["beta"] = 0.123
    path.write_text("".join(json.dumps(run) + "\n" for run in runs))
    assert "beta 0.123" in BLOCKS["cifar10-variants"](source)


def _pipelines(source: Path) -> tuple[Path, dict[str, dict]]:
    path = source / "experiments" / "pipelines.jsonl"
    return path, {run["name"]: run for run in map(json.loads, path.read_text().splitlines())}


def test_the_hosts_block_compares_runs_from_one_machine(tmp_path):
    source = _copy_sources(tmp_path)
    path, runs = _pipelines(source)
    runs["fp32"]["total_seconds"] = 2 * runs["default"]["total_seconds"]
    path.write_text("".join(json.dumps(run) + "\n" for run in runs.values()))
    assert "(2.00x)" in BLOCKS["hosts"](source)
    runs["fp32"]["host"] = {**runs["fp32"]["host"], "cpu": "another CPU"}
    path.write_text("".join(json.dumps(run) + "\n" for run in runs.values()))
    with pytest.raises(ValueError, match="compare them from one machine"):
        BLOCKS["hosts"](source)


def test_the_hosts_block_shows_other_hosts_runs_beside_the_committed_metrics(tmp_path):
    source = _copy_sources(tmp_path)
    path, runs = _pipelines(source)
    runs["default_epyc"]["total_seconds"] = 1234 * 60
    runs["default_epyc"]["metrics"]["vibi"]["posthoc_accuracy"] = 0.123456
    path.write_text("".join(json.dumps(run) + "\n" for run in runs.values()))
    block = BLOCKS["hosts"](source)
    assert "| `auto`: bf16 | 1234.0 min |" in block
    committed = json.loads((source / "metrics" / "vibi.json").read_text())["posthoc_accuracy"]
    assert f"| VIBI post-hoc accuracy | {committed:.4f} | 0.1235 |" in block


def test_the_counterfactual_measures_blocks_follow_their_sources(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "metrics" / "counterfactuals.json"
    metrics = json.loads(path.read_text())
    metrics["runner_up_im1_normalised"] = 0.123456
    path.write_text(json.dumps(metrics))
    block = BLOCKS["counterfactual-measures"](source)
    assert "| 0.12 [" in block and "published: generative (GEN) | 0.884 |" in block
    path = source / "experiments" / "fashion_counterfactuals.json"
    run = json.loads(path.read_text())
    run["metrics"]["counterfactuals"]["target_oracle_validity"] = 0.654321
    path.write_text(json.dumps(run))
    assert "| 0.654 [" in BLOCKS["counterfactual-measures-fashion"](source)


def test_the_bench_block_follows_the_committed_bench_runs(tmp_path):
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "bench.json"
    run = json.loads(path.read_text())
    run["cases"][0]["images_per_second"] = 98765.4
    path.write_text(json.dumps(run))
    assert "| 98765 |" in BLOCKS["bench"](tmp_path)
    assert "| 98765 |" not in BLOCKS["bench"](ROOT)


def test_the_repeated_bench_block_follows_each_run_and_refuses_two_hosts(tmp_path):
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "bench_fp32_epyc.json"
    runs = json.loads(path.read_text())
    runs[1]["cases"][0]["share_of_ceiling"] = 0.987
    path.write_text(json.dumps(runs))
    assert " / 99% / " in BLOCKS["bench-fp32-repeats"](tmp_path)
    runs[1]["host"]["cpu"] = "another CPU"
    path.write_text(json.dumps(runs))
    with pytest.raises(ValueError, match="more than one host"):
        BLOCKS["bench-fp32-repeats"](tmp_path)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                    "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_the_check_reads_the_metrics_git_holds_not_the_workspace(tmp_path, capsys):
    """A workspace metric that differs from the committed one (another CPU's `dvc repro`) does
    not fail the check against HEAD; against the workspace it names the page and the block."""
    repo = _copy_sources(tmp_path / "repo")
    for page, text in pages().items():
        (repo / page).parent.mkdir(parents=True, exist_ok=True)
        (repo / page).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "pages and their metrics")
    path = repo / "metrics" / "vibi.json"
    metrics = json.loads(path.read_text())
    metrics["posthoc_accuracy"] += 0.0031  # the third decimal, as a host without bf16 gives
    path.write_text(json.dumps(metrics))

    committed = snapshot(tmp_path / "head", "HEAD", root=repo)
    assert committed != repo
    assert json.loads((committed / "metrics" / "vibi.json").read_text())["posthoc_accuracy"] \
        == pytest.approx(metrics["posthoc_accuracy"] - 0.0031)
    assert drift(pages(repo), committed) == []
    assert drift(pages(repo), repo) == [("README.md", "stages"), ("README.md", "hosts")]
    assert main(["--check"], root=repo) == 0  # HEAD's metrics by default
    assert main(["--check", "--rev", "HEAD"], root=repo) == 0
    assert main(["--check", "--workspace"], root=repo) == 1
    assert "README.md: block results:stages differs from the metrics in the workspace" \
        in capsys.readouterr().out
    _git(repo, "commit", "-q", "-am", "the new metrics")  # committed without the pages
    assert main(["--check"], root=repo) == 1
    assert "README.md: block results:stages differs from the metrics at HEAD" \
        in capsys.readouterr().out


def test_outside_a_git_checkout_the_workspace_is_read(tmp_path):
    folder = _copy_sources(tmp_path / "unpacked")
    assert snapshot(tmp_path / "head", "HEAD", root=folder) == folder


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves():
    """README links into docs/ and docs/ pages' links (to each other, the README, images,
    headings) all point at something that exists."""
    broken = []
    for page, text in pages().items():
        base = (ROOT / page).parent
        for target in LINK.findall(re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file, _, anchor = target.partition("#")
            path = (base / file).resolve() if file else ROOT / page
            if not path.exists():
                broken.append(f"{page}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text()):
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, broken
    readme_docs = [t for t in LINK.findall((ROOT / "README.md").read_text())
                   if t.startswith("docs/") and t.endswith(".md")]
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= set(readme_docs), \
        "the README's map of docs/ misses a page"


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
