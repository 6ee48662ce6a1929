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
from tools.docs import BLOCKS, SOURCES, drift, main, pages, placement, render, snapshot

README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _copy_sources(dest: Path, root: Path = ROOT) -> Path:
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
                           "vibi-variants", "cifar-variants", "cifar-cpu-variants", "cifar-cpu",
                           "cifar-smooth-variants", "cifar-jump-variants", "cifar-tau2-seeds",
                           "cifar-airbench-wide",
                           "cifar-airbench-wide-gains", "cifar-airbench-jump",
                           "cifar-airbench-jump-gains", "cifar-airbench-jump1000",
                           "cifar-airbench-tau2", "cifar-airbench-tau2-gains",
                           "cifar-airbench-tau2-1000", "cifar-airbench-hour",
                           "cifar-airbench-hour-gains", "cifar-airbench-hour-stages",
                           "cifar-airbench-hour-rerun-stages", "cifar-airbench-sessions",
                           "bench", "vibi-variants-judged", "counterfactual-sweep",
                           "evaluation-encoding", "evaluation-cost", "counterfactual-measures",
                           "counterfactual-measures-sweep", "counterfactual-measures-fashion",
                           "cifar-airbench", "scaling", "shared-cores", "hosts",
                           "bench-fp32", "bench-fp32-repeats", "cifar-probes",
                           "cifar-airbench-chunk2", "cifar-fidelity", "cifar-judge-budgets",
                           "cifar-judge-lr", "cifar-vibi-published", "cifar-smooth",
                           "cifar-airbench-smooth", "cifar-judge-epochs",
                           "cifar-smooth-run", "cifar-airbench-mirror",
                           "cifar-mirror-run", "cifar-airbench-gain",
                           "cifar-airbench-gain1000", "cifar-airbench-gain-clean",
                           "cifar-airbench-gain-amx", "cifar-airbench-gain-amx-gains",
                           "cifar-airbench-gain1000-amx", "serving-bench", "serving-answer"}


def test_the_cifar_cpu_block_follows_its_pipeline_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_cpu_pipeline.json"
    run = json.loads(path.read_text())
    run["stage_seconds"]["train_vibi"] = 4321.0
    run["metrics"]["vibi"]["posthoc_accuracy"] = 0.654321
    run["params"]["vibi"]["epochs"] = 17
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-cpu"](source)
    assert "| 4321 |" in changed and "0.654" in changed and "17 of VIBI" in changed


def test_the_cifar_probes_block_follows_its_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_probes.json"
    run = json.loads(path.read_text())
    run["blackbox_accuracy"]["mirror"] = [0.987654, 0.9, 0.99]
    run["judge_agreement"]["lr 0.0003, 5 epochs"]["k256"] = [0.876543, 0.8, 0.9]
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-probes"](source)
    assert "| the image and its mirror (2 passes) | 0.988 [0.900, 0.990] |" in changed
    assert "| lr 0.0003, 5 epochs |" in changed and "0.877 [0.800, 0.900]" in changed


def test_the_cifar_judge_budgets_block_follows_its_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_judge_budgets.json"
    run = json.loads(path.read_text())
    variant = list(run["judge_agreement"])[1]
    run["judge_agreement"][variant]["k256"] = [0.876543, 0.8, 0.9]
    run["judge_agreement"][variant]["train_seconds"] = 4321.2
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-judge-budgets"](source)
    assert f"| {variant} |" in changed and "0.877 [0.800, 0.900]" in changed
    assert "| 4321 |" in changed and "training seconds" in changed


def test_the_cifar_vibi_published_block_follows_its_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_vibi_published.json"
    run = json.loads(path.read_text())
    run["vibi"]["posthoc_accuracy"] = 0.0654321
    run["history"][-1]["val_approximator_fidelity"] = 0.987654
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-vibi-published"](source)
    assert "keeps its prediction on 0.065" in changed and "| 0.988 |" in changed


def test_a_resumed_runs_block_counts_the_stages_it_did_not_rerun_at_the_first_runs_seconds(
        tmp_path):
    """The wide run re-ran L2X, VIBI, render and evaluate on a kept run: its other stages' seconds
    (DVC's check alone) must not count, the first run's must; a change to either shows."""
    source = _copy_sources(tmp_path)
    wide = source / "experiments" / "cifar_airbench_wide_pipeline.json"
    first = source / "experiments" / "cifar_airbench_gain_amx_pipeline.json"
    run, base = json.loads(wide.read_text()), json.loads(first.read_text())
    assert "train_blackbox" not in run["resumed"]["stages_run"]
    run["stage_seconds"]["train_blackbox"] = 9999.0  # not re-run: must not count
    run["stage_seconds"]["train_vibi"] = 4321.0  # re-run: counts
    base["stage_seconds"]["train_blackbox"] = 1234.0
    wide.write_text(json.dumps(run))
    first.write_text(json.dumps(base))
    total = sum(base["stage_seconds"][s] for s in base["stage_seconds"]
                if s not in run["resumed"]["stages_run"]) + sum(
        run["stage_seconds"][s] for s in run["resumed"]["stages_run"])
    changed = BLOCKS["cifar-airbench-wide"](source)
    assert f"{total / 60:.1f} min in all" in changed
    assert "| 1234 |" in changed and "| 4321 |" in changed and "9999" not in changed
    assert "count at its seconds, the others at those of the run it resumed" in changed
    with pytest.raises(ValueError, match="resumed_from"):
        BLOCKS["cifar-airbench"](source, results="experiments/cifar_airbench_wide_pipeline.json")


def test_a_run_resumed_from_a_resumed_run_counts_each_kept_stage_where_it_last_ran(tmp_path):
    """The jump run resumed the wide run, which resumed the gain run: L2X (last run by the wide
    run) and the black box (last run by the gain run) count at those runs' seconds."""
    source = _copy_sources(tmp_path)
    experiments = source / "experiments"
    paths = [experiments / f"cifar_airbench_{name}_pipeline.json"
             for name in ("jump", "wide", "gain_amx")]
    jump, wide, first = (json.loads(path.read_text()) for path in paths)
    assert "train_l2x" in wide["resumed"]["stages_run"]
    assert "train_l2x" not in jump["resumed"]["stages_run"]
    assert "train_blackbox" not in wide["resumed"]["stages_run"] + jump["resumed"]["stages_run"]
    wide["stage_seconds"]["train_l2x"] = 4321.0
    wide["stage_seconds"]["train_blackbox"] = 9999.0  # kept by the wide run: must not count
    first["stage_seconds"]["train_blackbox"] = 1234.0
    for path, run in zip(paths, (jump, wide, first)):
        path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-airbench-jump"](source)
    assert "| 1234 |" in changed and "| 4321 |" in changed and "9999" not in changed
    assert "itself composed with `experiments/cifar_airbench_gain_amx_pipeline.json`" in changed


def test_the_cifar_airbench_block_follows_its_pipeline_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_airbench_pipeline.json"
    run = json.loads(path.read_text())
    run["metrics"]["judge"]["test_agreement_k256"] = 0.876543
    run["metrics"]["evaluation_differences"]["random"]["fidelity_k64"]["ci_low"] = 0.0123456
    run["metrics"]["blackbox"]["test_accuracy"] = 0.987654
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-airbench"](source)
    assert "| 0.877 |" in changed and "+0.012" in changed and "0.9877" in changed


def test_the_cifar_chunk2_block_counts_chunks_and_follows_its_run(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_airbench_chunk2_pipeline.json"
    run = json.loads(path.read_text())
    run["metrics"]["judge"]["test_agreement_k64"] = 0.876543
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-airbench-chunk2"](source)
    assert "| 0.877 |" in changed and "of 256 chunks of 2x2 = 1024 pixels" in changed
    assert "k = 16 (16 chunks of 2x2 = 64 pixels)" in changed


def test_an_airbench_block_with_road_budgets_shows_both_fills(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "cifar_airbench_pipeline.json"
    run = json.loads(path.read_text())
    run["params"]["evaluate"]["road_budgets"] = True
    run["params"]["vibi"]["fill"] = "smooth"
    for row in run["metrics"]["evaluation"]["methods"].values():
        for measure in ("posthoc_accuracy", "fidelity"):
            row.update({f"{measure}_road_k64{s}": 0.5 for s in ("", "_ci_low", "_ci_high")})
    run["metrics"]["evaluation"]["methods"]["vibi"]["posthoc_accuracy_road_k64"] = 0.654321
    for row in run["metrics"]["evaluation_differences"].values():
        row["fidelity_road_k64"] = {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    run["metrics"]["evaluation_differences"]["random"]["fidelity_road_k64"]["ci_low"] = 0.0456789
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-airbench"](source)
    assert "| posthoc_accuracy_k64 | fidelity_k64 | posthoc_accuracy_road_k64 | fidelity_road_k64 |" \
        in changed and "0.654 [0.500, 0.500]" in changed
    assert "VIBI minus each method, fidelity_k64" in changed
    assert "VIBI minus each method, fidelity_road_k64" in changed and "+0.046" in changed
    assert "fill `smooth`" in changed and "0-filled chunks" not in changed


@pytest.mark.parametrize("block, results, table, budget, kept", [
    ("cifar-fidelity", "cifar_fidelity_probe.json", "fidelity", "k16",
     "16 chunks of 2x2 = 64 pixels kept"),
    ("cifar-smooth", "cifar_smooth_probe.json", "fidelity_road", "k64", "64 pixels kept")])
def test_the_cifar_fidelity_blocks_follow_their_runs(tmp_path, block, results, table, budget,
                                                      kept):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / results
    run = json.loads(path.read_text())
    judge = next(iter(run[table]))
    run[table][judge][budget]["lime"]["minus_random"] = [0.054321, 0.01, 0.09]
    if "posthoc_road" in run:  # the black box's own answers, with ROAD's fill
        run["posthoc_road"][budget]["random"]["accuracy"] = [0.123456, 0.1, 0.15]
    path.write_text(json.dumps(run))
    changed = BLOCKS[block](source)
    assert "| lime minus random |" in changed and "+0.054 [+0.010, +0.090]" in changed
    assert kept in changed
    if "posthoc_road" in run:
        assert "| random chunks, accuracy |" in changed and "| 0.123 [0.100, 0.150] |" in changed
        assert "the removed pixels ROAD-imputed" in changed and "The black box itself" in changed


def test_the_hosts_block_compares_runs_from_one_machine(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "fp32_pipeline.json"
    run = json.loads(path.read_text())
    run["total_seconds"] = 2 * json.loads(
        (source / "experiments" / "default_pipeline.json").read_text())["total_seconds"]
    path.write_text(json.dumps(run))
    assert "(2.00x)" in BLOCKS["hosts"](source)
    run["host"] = {**run["host"], "cpu": "another CPU"}
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="compare them from one machine"):
        BLOCKS["hosts"](source)


def test_the_hosts_block_shows_other_hosts_runs_beside_the_committed_metrics(tmp_path):
    source = _copy_sources(tmp_path)
    path = source / "experiments" / "default_pipeline_epyc.json"
    run = json.loads(path.read_text())
    run["total_seconds"] = 1234 * 60
    run["metrics"]["vibi"]["posthoc_accuracy"] = 0.123456
    path.write_text(json.dumps(run))
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
    path = tmp_path / "experiments" / "bench_fp32_epyc_2.json"
    run = json.loads(path.read_text())
    run["cases"][0]["share_of_ceiling"] = 0.987
    path.write_text(json.dumps(run))
    assert " / 99% / " in BLOCKS["bench-fp32-repeats"](tmp_path)
    run["host"]["cpu"] = "another CPU"
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="more than one host"):
        BLOCKS["bench-fp32-repeats"](tmp_path)


def test_a_rerun_comparison_names_each_metric_that_moved(tmp_path):
    """The same setting run twice: the block says every metric is equal, and names the one a
    change moved (with no params changed, it says so)."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    block = BLOCKS["cifar-airbench-hour-rerun-stages"]
    path = tmp_path / "experiments" / "cifar_airbench_hour_rerun_pipeline.json"
    run = json.loads(path.read_text())
    base = json.loads((tmp_path / "experiments" / "cifar_airbench_hour_pipeline.json").read_text())
    run["metrics"], run["params"] = base["metrics"], base["params"]
    path.write_text(json.dumps(run))
    same = block(tmp_path)
    assert "Params that differ: none." in same and "exactly equal." in same
    assert "differing" not in same
    run["metrics"]["blackbox"]["test_accuracy"] = 0.5
    path.write_text(json.dumps(run))
    assert "; differing: `blackbox.test_accuracy`." in block(tmp_path)


def test_the_bench_sessions_block_follows_each_run(tmp_path):
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "bench_cifar_airbench_hour_session_2.json"
    run = json.loads(path.read_text())
    run["ceiling_gflops"]["bf16"] = 1234.4
    run["cases"][0]["images_per_second"] = 98765.4
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-airbench-sessions"](tmp_path)
    assert "| 1234 |" in changed and "| 98765 |" in changed
    assert "| 98765 |" not in BLOCKS["cifar-airbench-sessions"](ROOT)
    run["host"]["cpu"] = "another CPU"
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="more than one host"):
        BLOCKS["cifar-airbench-sessions"](tmp_path)


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
