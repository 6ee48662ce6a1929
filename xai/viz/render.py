"""The figures people look at: decision boundaries, VIBI explanations, counterfactuals.

Each function takes tensors (already computed by the training stages or by `xai.explain.boundary`) and
returns a matplotlib figure of a fixed size; `xai.viz.figures.save_png` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.patches as mpatches
import numpy as np
import torch
from matplotlib.figure import Figure

from xai.chunks import chunks_to_pixels
from xai.data.prepared import Split
from xai.explain.boundary import Guide, Projection, importance, project
from xai.models.explainers import CHUNK_SIZE
from xai.models.vibi import VibiModel, explain_split
from xai.tensors import to_unit
from xai.train.vibi import explanations_state
from xai.viz.figures import new_figure

CLASS_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                 "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
RIGHT, WRONG = np.array([0.1, 0.65, 0.2]), np.array([0.85, 0.1, 0.1])


def _class_colour(c: int) -> str:
    return CLASS_COLOURS[c % len(CLASS_COLOURS)]


# ----------------------------------------------------------------------------- toy boundary


def toy_boundary(state: dict, points: Sequence[int]) -> Figure:
    """The reference's four panels from a toy projections file (`train_invertible` output).

    (a) input domain: training points by class and the boundary curves mapped back through T^-1;
    (b) feature domain: T(x) and the straight boundaries; (c), (d): test points `points` with
    their projections onto the boundary and the explanation arrows, in both domains.
    """
    fig, axes = new_figure(11, 9.5, rows=2, cols=2)
    (a, b), (c, d) = axes
    classes = state["classes"]
    for ax, key in ((a, "train_x"), (b, "train_features")):
        xy = state[key].numpy()
        for i, name in enumerate(classes):
            sel = state["train_y"].numpy() == i
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.5, color=_class_colour(i),
                       label=f"class {name}")
    for ax, key in ((c, "test_x"), (d, "test_features")):
        xy = state[key].numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.15,
                   c=[_class_colour(int(y)) for y in state["test_y"]])
    for n, curve in enumerate(state["curves"]):
        i, k = curve["classes"]
        style = {"color": "black", "lw": 1.5, "ls": ("-", "--", ":", "-.")[n % 4],
                 "label": f"boundary {classes[i]} | {classes[k]}"}
        for ax, key in ((a, "inputs"), (b, "features"), (c, "inputs"), (d, "features")):
            xy = curve[key].numpy()
            ax.plot(xy[:, 0], xy[:, 1], **style)
    idx = torch.as_tensor(list(points), dtype=torch.long)
    for ax, src, dst in ((c, "test_x", "projected"), (d, "test_features", "projected_features")):
        p, q = state[src][idx].numpy(), state[dst][idx].numpy()
        ax.scatter(p[:, 0], p[:, 1], s=40, color="black", zorder=3, label="test point x")
        ax.scatter(q[:, 0], q[:, 1], s=40, marker="x", color="crimson", zorder=3,
                   label="projection x_p")
        for (x0, y0), (x1, y1) in zip(p, q):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "crimson", "lw": 1.2})
    low, high = state["window"].numpy()
    for ax in (a, c):
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
    for ax in (b, d):  # equal scales: projections show as orthogonal
        ax.set_aspect("equal", adjustable="datalim")
    titles = ("(a) input domain: data and boundary T^-1(hyperplane)",
              "(b) feature domain: T(x) and the hyperplane",
              "(c) input domain: points, projections x_p, explanations x - x_p",
              "(d) feature domain: the same, projected orthogonally")
    for ax, title, (xl, yl) in zip((a, b, c, d), titles,
                                   (("x1", "x2"), ("z1", "z2"), ("x1", "x2"), ("z1", "z2"))):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="best", fontsize=7)
    fig.suptitle(f"Invertible classifier on {state['dataset']}: explicit decision boundary")
    return fig


# ----------------------------------------------------------------------------- VIBI grid


def _show_image(ax: object, image: torch.Tensor) -> None:
    """Draw a C x H x W float image in [0, 1] (grey or colour) without axes."""
    img = image.permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def _border(ax: object, colour: np.ndarray, strength: float) -> None:
    """A coloured frame whose opacity is `strength` in [0, 1]."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(4)
        spine.set_edgecolor((*colour, 0.15 + 0.85 * strength))


@dataclass(frozen=True)
class VibiPanel:
    """What one row of the VIBI grid shows."""

    image: torch.Tensor         # C x H x W in [0, 1]
    chunk_probs: torch.Tensor   # xpl x rows x cols, p(z | x)
    top_k: torch.Tensor         # xpl x rows x cols, bool
    chunk: int                  # chunk side in pixels
    label: int                  # true class
    blackbox: int               # black-box prediction
    approximator: int           # approximator prediction on the top-k input
    js: float                   # JS(black box || approximator)
    blackbox_on_kept: int | None = None  # the black box's own prediction on the top-k input


def _up(grid: torch.Tensor, chunk: int, shape: tuple[int, int]) -> torch.Tensor:
    """rows x cols -> H x W, each value on its chunk's pixels, as the approximator saw them."""
    return chunks_to_pixels(grid.float().flatten(), (1, *grid.shape), chunk, shape)[0]


def vibi_panels(test: Split, explanations: dict, blackbox_probs: torch.Tensor,
                indices: Sequence[int]) -> list[VibiPanel]:
    """Panels for test images `indices` from a VIBI explanations file (train_vibi output)."""
    blackbox = blackbox_probs.argmax(1)
    approx = explanations["approximator_probs"].float().argmax(1)
    on_kept = explanations.get("blackbox_on_kept_probs")
    on_kept = None if on_kept is None else on_kept.float().argmax(1)
    chunk = CHUNK_SIZE[explanations["spec"]["explainer_type"]]
    return [VibiPanel(to_unit(test.x[i]), explanations["chunk_probs"][i],
                      explanations["top_k"][i], chunk, int(test.y[i]), int(blackbox[i]),
                      int(approx[i]), float(explanations["js"][i]),
                      None if on_kept is None else int(on_kept[i])) for i in indices]


def explained_panels(model: VibiModel, images: Split, blackbox_probs: torch.Tensor, *,
                     blackbox: torch.nn.Module | None = None,
                     approximator: torch.nn.Module | None = None,
                     amp: bool = False) -> list[VibiPanel]:
    """Panels for all of `images` (true classes in `images.y`) as `model` explains them now: the
    explanations file `train_vibi` would write for them (`explanations_state`), read as `render`
    reads it. `blackbox` (on float [0, 1] images) adds its prediction on the kept chunks,
    `approximator` replaces the pair's own (the `blackbox` objective), `amp` as in training.
    The model's weights and mode are left as they were (it explains under inference mode)."""
    expl = explain_split(model, images.x, blackbox, amp=amp, approximator=approximator)
    state = explanations_state(model, expl, blackbox_probs)
    shown = Split(images.x.cpu(), images.y.cpu())
    return vibi_panels(shown, state, blackbox_probs.cpu(), range(len(images)))


def vibi_grid(panels: Sequence[VibiPanel], classes: Sequence[str], k: int, beta: float,
              columns: int = 3) -> Figure:
    """Per test image: input | explanation distribution p(z|x) (heat map) | top-k explanation,
    titled with the black box's own prediction on the kept chunks (red where it changes its mind;
    files without it show the approximator's).

    Frames are green where the black box is right, red where it is wrong; their strength grows
    with 1 - JS(black box, approximator), i.e. with how well the kept chunks carry its decision.
    """
    rows = -(-len(panels) // columns)
    fig, axes = new_figure(3.8 * columns, 1.35 * rows + 0.6, rows=rows, cols=3 * columns)
    heat = None
    for i, p in enumerate(panels):
        r, c0 = divmod(i, columns)
        a_in, a_heat, a_top = axes[r][3 * c0:3 * c0 + 3]
        h, w = p.image.shape[1:]
        _show_image(a_in, p.image)
        probs = p.chunk_probs.float().sum(0)  # shared chunks: one grid; per-channel: summed
        heat = a_heat.imshow(_up(probs, p.chunk, (h, w)).numpy(), cmap="magma", vmin=0)
        a_heat.set_xticks([])
        a_heat.set_yticks([])
        keep = _up(p.top_k.any(0), p.chunk, (h, w))
        _show_image(a_top, p.image * keep)
        right = p.blackbox == p.label
        strength = float(max(0.0, min(1.0, 1 - p.js / np.log(2))))
        for ax in (a_in, a_heat, a_top):
            _border(ax, RIGHT if right else WRONG, strength)
        a_in.set_title(f"true {classes[p.label]}\nblack box {classes[p.blackbox]}", fontsize=7)
        a_heat.set_title("p(z | x)", fontsize=7)
        if p.blackbox_on_kept is None:
            seen = f"top-{k} chunks\napprox. {classes[p.approximator]}"
        else:  # what the black box itself makes of the kept chunks (red: it changes its mind)
            seen = f"top-{k}: black box says\n{classes[p.blackbox_on_kept]}"
        a_top.set_title(seen, fontsize=7,
                        color="black" if p.blackbox_on_kept in (None, p.blackbox) else WRONG)
    for ax in [ax for row in axes for ax in row][3 * len(panels):]:
        ax.set_visible(False)
    if heat is not None:
        fig.colorbar(heat, ax=[ax for row in axes for ax in row], shrink=0.6,
                     label="explanation probability p(z | x) per chunk")
    legend = [mpatches.Patch(color=RIGHT, label="black box right"),
              mpatches.Patch(color=WRONG, label="black box wrong"),
              mpatches.Patch(color="grey", alpha=0.4, label="faint frame: the predictor on the kept chunks disagrees")]
    fig.legend(handles=legend, loc="outside lower center", ncols=3, fontsize=7)
    fig.suptitle(f"VIBI explanations (k = {k}, beta = {beta:g})")
    return fig


# ----------------------------------------------------------------------------- counterfactuals


@dataclass(frozen=True)
class Counterfactual:
    """One row: an input, its projection onto one boundary, the point across it, and the walk."""

    image: torch.Tensor       # C x H x W
    projected: torch.Tensor   # C x H x W, x_p on the boundary
    crossed: torch.Tensor     # C x H x W, x_cf: the counterfactual class ahead by `margin`
    importance: torch.Tensor  # C x H x W
    walk: torch.Tensor        # S x C x H x W, from x (first) across the boundary to x_cf (last)
    walk_margins: torch.Tensor  # S: f_k - f_c along the walk (0 on the boundary)
    source: int               # predicted class c
    counterfactual: int       # the class on the other side, k
    crossed_top: int          # the invertible model's class at x_cf (k up to float error)
    kind: str                 # "runner-up" or "target"
    along: str                # the move's direction (`Guide.direction`): "normal" (through x_p),
                              # "class_centres" or "prototype"


#: Frames of the walk on each side of the boundary (the boundary point itself is shared).
WALK_FRAMES = 4


def counterfactuals(rows: Sequence[Counterfactual], classes: Sequence[str]) -> Figure:
    """input | counterfactual across the boundary | difference x - x_cf | importance, per row;
    then, for the first row of each kind, the walk from x across the boundary (through x_p when
    the move is along the normal) to x_cf."""
    walks = [r for i, r in enumerate(rows) if i == 0 or r.kind != rows[i - 1].kind]
    frames = len(rows[0].walk) if rows else 0
    cols = max(4, frames)
    fig, axes = new_figure(2.0 * cols, 2.2 * (len(rows) + len(walks)) + 0.5,
                           rows=len(rows) + len(walks), cols=cols)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, row in enumerate(rows):
        a_in, a_cf, a_diff, a_imp = axes[r][:4]
        c, k = classes[row.source], classes[row.counterfactual]
        _show_image(a_in, row.image.clamp(0, 1))
        _show_image(a_cf, row.crossed.clamp(0, 1))
        diff = (row.image - row.crossed).sum(0)
        lim = float(diff.abs().max().clamp_min(1e-8))
        d = a_diff.imshow(diff.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        imp = a_imp.imshow(row.importance.sum(0).numpy(), cmap="viridis", vmin=0)
        for ax, im in ((a_diff, d), (a_imp, imp)):
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
        a_in.set_title(f"input: predicted {c}", fontsize=8)
        a_cf.set_title(f"counterfactual {k} ({row.kind})\nmodel: {classes[row.crossed_top]}",
                       fontsize=8)
        a_diff.set_title("x - x_cf (red: remove)", fontsize=8)
        a_imp.set_title("importance |grad (f_c - f_k)(x_p)\n* (x - x_p)|", fontsize=7)
    for w, row in enumerate(walks):
        c, k = classes[row.source], classes[row.counterfactual]
        for j, (image, margin) in enumerate(zip(row.walk, row.walk_margins)):
            ax = axes[len(rows) + w][j]
            _show_image(ax, image.clamp(0, 1))
            on_boundary = "x_p" if row.along == "normal" else "boundary"
            label = "x" if j == 0 else on_boundary if j == WALK_FRAMES - 1 else \
                "x_cf" if j == len(row.walk) - 1 else ""
            ax.set_title(f"{label} f_{k} - f_{c} = {float(margin):+.1f}", fontsize=7)
    move = {"normal": "along the boundary's normal", "class_centres": "between class centres",
            "prototype": "towards prototypes (the target class's nearest training images)"}
    fig.suptitle("Invertible classifier: counterfactuals across decision boundaries, moving\n"
                 f"{move[rows[0].along] if rows else ''} (bottom: walks from x across the "
                 "boundary)")
    return fig


def counterfactual_rows(model: torch.nn.Module, x: torch.Tensor, target: int | None,
                        margin: float, guide: Guide = Guide()) -> list[Counterfactual]:
    """Rows for each image: across the runner-up boundary, and across `target`'s where it differs,
    `margin` logits past it, moving along `guide` (default: the boundary's normal)."""
    jobs = [("runner-up", x, None)]
    if target is not None:
        with torch.no_grad():
            other = model(x).argmax(1) != target
        jobs.append(("target", x[other], target))
    rows = []
    for kind, inputs, counterfactual in jobs:
        if not len(inputs):
            continue
        p = project(model, inputs, counterfactual=counterfactual)
        imp = importance(model, p)
        crossed = guide.cross(model, p, margin)
        # the walk: WALK_FRAMES frames from x to the boundary, then WALK_FRAMES - 1 more to x_cf,
        # in feature space along the straight line (the boundary lies at t* = m / (m + margin))
        t_star = p.margin / (p.margin + margin)
        walks, margins = [], []
        for i in range(len(inputs)):
            steps = torch.cat([torch.linspace(0, float(t_star[i]), WALK_FRAMES),
                               torch.linspace(float(t_star[i]), 1, WALK_FRAMES)[1:]])
            single = Projection(*(getattr(p, f)[i:i + 1] for f in (
                "inputs", "projected", "features", "projected_features", "source",
                "counterfactual", "margin")))
            walks.append(guide.cross(model, single, margin, steps)[0])
            margins.append(-(float(p.margin[i]) - steps * (float(p.margin[i]) + margin)))
        with torch.no_grad():
            top = model(crossed).argmax(1)
        rows += [Counterfactual(p.inputs[i], p.projected[i], crossed[i], imp[i], walks[i],
                                margins[i], int(p.source[i]), int(p.counterfactual[i]),
                                int(top[i]), kind,
                                guide.direction)
                 for i in range(len(inputs))]
    return rows
