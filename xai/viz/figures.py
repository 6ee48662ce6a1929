"""Figure basics: a headless backend, one style, fixed sizes, atomic PNG output, training curves."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, ever

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from xai.io import write_bytes

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
plt.rcParams.update(STYLE)


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: object
               ) -> tuple[Figure, object]:
    """A figure of a fixed size in inches with a constrained layout (no clipped labels)."""
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), layout="constrained",
                             squeeze=False, **kwargs)
    return fig, axes


def png_bytes(fig: Figure, dpi: int) -> bytes:
    """`fig` as PNG bytes, without volatile metadata; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int) -> None:
    """Write `fig` as a PNG atomically, without volatile metadata, and close it."""
    write_bytes(path, png_bytes(fig, dpi))


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """Rows of a per-epoch CSV (a DVC plots file) as floats."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)]


_SKIP = {"epoch", "step", "lr", "tau"}


def _panel(column: str) -> str | None:
    """Which panel a per-epoch column belongs to: quality (accuracy, fidelity), cost (losses and
    divergences), or none (bookkeeping, time and throughput)."""
    if column in _SKIP or "second" in column:
        return None
    return "quality" if ("accuracy" in column or "fidelity" in column) else "cost"


def training_curves(histories: Mapping[str, list[dict[str, float]]]) -> Figure:
    """One row per stage: losses and divergences left, accuracy / fidelity right, by epoch."""
    fig, axes = new_figure(10, 2.6 * max(len(histories), 1), rows=max(len(histories), 1), cols=2)
    for row, (stage, rows) in enumerate(histories.items()):
        left, right = axes[row]
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
        for col in (rows[0] if rows else {}):
            panel = _panel(col)
            if panel is not None:
                (right if panel == "quality" else left).plot(
                    epochs, [r.get(col) for r in rows], marker="o", markersize=3, label=col)
        for ax, what in ((left, "loss / divergence"), (right, "accuracy / fidelity")):
            ax.set_title(f"{stage}: {what}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(loc="best", ncols=2 if len(ax.lines) > 4 else 1, fontsize=7)
            else:
                ax.text(0.5, 0.5, "no such columns", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
    fig.suptitle("Training curves")
    return fig


CURVE_PANELS = (
    ("deletion", "deletion, removed chunks 0 (lower is better)"),
    ("insertion", "insertion, removed chunks 0 (higher is better)"),
    ("deletion_road", "ROAD MoRF: most relevant removed, imputed (lower is better)"),
    ("insertion_road", "ROAD LeRF: least relevant removed, imputed (higher is better)"),
)


def method_colours(n: int) -> list:
    """`n` distinct colours (tab20 order: pairs of shades, dark first)."""
    cmap = plt.get_cmap("tab20")
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return [cmap(order[i % 20]) for i in range(n)]


def deletion_insertion_figure(curves: Mapping[str, Mapping[str, list[float]]]) -> Figure:
    """Mean deletion / insertion curves per method, with 0 fill and with ROAD's imputation:
    {method: {"fractions": [...], "deletion": [...], "insertion": [...], ...}}."""
    fig, axes = new_figure(12, 8.5, rows=2, cols=2)
    colours = method_colours(len(curves))
    for ax, (key, title) in zip([a for row in axes for a in row], CURVE_PANELS):
        for colour, (name, c) in zip(colours, curves.items()):
            fractions, curve = c["fractions"], c[key]
            area = sum((b - a) * (u + v) / 2 for a, b, u, v in
                       zip(fractions, fractions[1:], curve, curve[1:]))
            ax.plot(fractions, curve, color=colour, marker=".", label=f"{name} ({area:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of chunks removed" if "road" in key and "insertion" not in key
                      else "fraction of chunks (most important first)")
        ax.set_ylabel("probability of the predicted class")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="method (AUC)", title_fontsize=7)
    fig.suptitle("Deletion and insertion curves (mean over the evaluation subset)")
    return fig


def measures_figure(table: Mapping[str, Mapping[str, float]], budgets: list[int],
                    scalar_measures: list[str]) -> Figure:
    """Post-hoc accuracy and judge fidelity against the budget (lines), one bar chart per other
    measure with its 95 % interval, methods side by side."""
    methods = list(table)
    panels = 2 + len(scalar_measures)
    cols = 4
    rows = -(-panels // cols)
    fig, axes = new_figure(3.4 * cols, 3.1 * rows, rows=rows, cols=cols)
    flat = [ax for row in axes for ax in row]
    colours = method_colours(len(methods))
    for ax, measure in zip(flat[:2], ("posthoc_accuracy", "fidelity")):
        for i, m in enumerate(methods):
            ax.plot(budgets, [table[m][f"{measure}_k{b}"] for b in budgets], marker="o",
                    color=colours[i], label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("chunks kept")
        ax.set_title("post-hoc accuracy" if measure == "posthoc_accuracy"
                     else "fidelity (neutral judge)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=6)
    for ax, measure in zip(flat[2:], scalar_measures):
        values = [table[m][measure] for m in methods]
        errors = [[v - table[m].get(f"{measure}_ci_low", v) for m, v in zip(methods, values)],
                  [table[m].get(f"{measure}_ci_high", v) - v for m, v in zip(methods, values)]]
        ax.bar(range(len(methods)), values, color=colours, yerr=errors, capsize=2)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=6)
        ax.set_title(measure.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.suptitle("Explanation quality, every method measured the same way (95 % intervals)")
    return fig


def _annotate_apart(ax: Axes, labels: Sequence[tuple[str, float, float]], fontsize: float = 7
                    ) -> None:
    """Label each point (name, x, y) just right of it, moving a label up or down in steps of a
    line where it would cover one already placed (highest points first)."""
    ax.figure.canvas.draw()  # fixes the limits, so data -> display positions hold
    points_per_pixel = 72 / ax.figure.dpi
    line, char = 1.2 * fontsize, 0.6 * fontsize  # in points
    placed: list[tuple[float, float, float, float]] = []
    for name, x, y in sorted(labels, key=lambda label: -label[2]):
        px, py = (v * points_per_pixel for v in ax.transData.transform((x, y)))
        for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            dy = 4 + shift * line
            box = (px + 5, py + dy, px + 5 + char * len(name), py + dy + line)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, dy), fontsize=fontsize)


def cost_figure(points: Mapping[str, Mapping[str, float]], measure: str) -> Figure:
    """One point per method: `measure` (with its 95 % interval) against wall seconds per
    explained image on a log axis; {method: {"seconds_per_image", measure, measure_ci_low,
    measure_ci_high, "amortised": 0 or 1}}. Amortised methods (a trained explainer: one forward
    pass per image, paid for once in training) are drawn as stars."""
    fig, axes = new_figure(7.5, 5)
    ax = axes[0][0]
    colours = method_colours(len(points))
    for colour, (name, p) in zip(colours, points.items()):
        value = p[measure]
        error = [[value - p.get(f"{measure}_ci_low", value)],
                 [p.get(f"{measure}_ci_high", value) - value]]
        ax.errorbar(p["seconds_per_image"], value, yerr=error, fmt="*" if p["amortised"] else "o",
                    markersize=12 if p["amortised"] else 6, color=colour, capsize=3)
    ax.set_xscale("log")
    _annotate_apart(ax, [(name, p["seconds_per_image"], p[measure]) for name, p in points.items()])
    ax.set_xlabel("seconds per explained image (log; explaining only, batched)")
    ax.set_ylabel(measure.replace("_", " ") + " (neutral judge)")
    ax.grid(alpha=0.3, which="both")
    # every point carries its name; a legend would only repeat them and cover some
    ax.set_title("What an explanation costs and what it is worth (stars: amortised, a trained "
                 "explainer)", fontsize=10)
    return fig
