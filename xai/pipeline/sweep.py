"""Plot a VIBI sweep from MLflow: fidelity and KL against beta, one line per k.

    python -m xai.pipeline.sweep [--baseline REV] [--model models/vibi.pt] [--out figures/sweep_beta.png]

Reads the finished `train_vibi` runs of the tracking store named in params.yaml (those of one
`dvc exp run --queue` sweep when `--baseline` names its baseline commit, else all), plus the run
that wrote the working directory's model: a queued experiment whose params equal the baseline's
re-runs nothing and logs no run, so the baseline's own point comes from there. Keeps the newest
run per (k, beta), prints the table and writes the figure next to a CSV of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from xai.pipeline import tracking
from xai.pipeline.config import load_config
from xai.viz.figures import new_figure, save_png
from xai.io import save_csv

STAGE = "train_vibi"


def sweep_points(records: Sequence[tracking.RunRecord]) -> list[dict[str, float]]:
    """Newest run per (k, beta): rows of k, beta, approximator_fidelity, mean_kl, sorted by k then beta."""
    newest: dict[tuple[int, float], tracking.RunRecord] = {}
    for r in sorted(records, key=lambda r: r.start_time):
        if "vibi.k" in r.params and "vibi.beta" in r.params and "approximator_fidelity" in r.metrics:
            newest[(int(r.params["vibi.k"]), float(r.params["vibi.beta"]))] = r
    return [{"k": k, "beta": beta, "approximator_fidelity": r.metrics["approximator_fidelity"],
             "mean_kl": r.metrics.get("mean_kl", float("nan"))}
            for (k, beta), r in sorted(newest.items())]


def beta_figure(rows: Sequence[dict[str, float]]) -> Figure:
    """Two panels, fidelity and mean KL against beta (symmetric-log axis, so beta = 0 shows)."""
    fig, axes = new_figure(9, 3.4, cols=2)
    positive = [r["beta"] for r in rows if r["beta"] > 0]
    linthresh = min(positive) if positive else 1e-3
    for k in sorted({int(r["k"]) for r in rows}):
        line = [r for r in rows if r["k"] == k]
        for ax, key in zip(axes[0], ("approximator_fidelity", "mean_kl")):
            ax.plot([r["beta"] for r in line], [r[key] for r in line], marker="o", label=f"k = {k}")
    for ax, label in zip(axes[0], ("test fidelity (top-k)", "mean KL(p(z|x) || uniform)")):
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlabel("beta")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("VIBI: fidelity and compression against beta")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--baseline", help="only the experiments queued from this commit")
    parser.add_argument("--model", type=Path, default=Path("models/vibi.pt"),
                        help="also plot the run that wrote this file (the baseline's own point)")
    parser.add_argument("--out", type=Path, default=Path("figures/sweep_beta.png"))
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    query = f"tags.`xai.stage` = '{STAGE}' and attributes.status = 'FINISHED'"
    if args.baseline:
        query += f" and tags.`dvc.baseline_rev` LIKE '{args.baseline}%'"
    records = tracking.run_records(cfg.tracking, query)
    baseline_run = tracking.producer_record(cfg.tracking, args.model)
    rows = sweep_points(records + ([baseline_run] if baseline_run else []))
    if not rows:
        raise SystemExit(f"no finished {STAGE} runs in {tracking.tracking_uri(cfg.tracking)}"
                         + (f" for baseline {args.baseline}" if args.baseline else ""))
    print(f"{'k':>3} {'beta':>8} {'fidelity':>9} {'mean KL':>8}")
    for r in rows:
        print(f"{r['k']:>3} {r['beta']:>8g} {r['approximator_fidelity']:>9.4f} {r['mean_kl']:>8.4f}")
    save_png(beta_figure(rows), args.out, args.dpi)
    save_csv(rows, args.out.with_suffix(".csv"))
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
