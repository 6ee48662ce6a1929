"""Figures render headless into non-empty PNGs."""

from __future__ import annotations

import torch
from PIL import Image

from xai.io import save_csv
from xai.viz.figures import cost_figure, read_rows, save_png, training_curves


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        assert len(img.convert("L").getcolors(1 << 16)) > 10  # not a blank canvas


def test_training_curves_from_plots_files(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "val_accuracy": 1 - 1 / (e + 1), "wall_seconds": e}
            for e in (1, 2, 3)]
    save_csv(rows, tmp_path / "a.csv")
    fig = training_curves({"train_blackbox": read_rows(tmp_path / "a.csv"), "other": []})
    save_png(fig, tmp_path / "curves.png", dpi=80)
    assert_png(tmp_path / "curves.png")


def test_sweep_keeps_the_newest_run_per_point_and_plots(tmp_path):
    from xai.pipeline.sweep import beta_figure, sweep_points
    from xai.pipeline.tracking import RunRecord

    def rec(t, k, beta, fid):
        return RunRecord(str(t), "", "FINISHED", t, {"vibi.k": str(k), "vibi.beta": str(beta)},
                         {"approximator_fidelity": fid, "mean_kl": 1.0 - beta}, {})

    rows = sweep_points([rec(1, 4, 0.01, 0.5), rec(2, 4, 0.01, 0.9), rec(3, 4, 0.0, 0.95),
                         rec(4, 8, 0.1, 0.97)])
    assert [(r["k"], r["beta"], r["approximator_fidelity"]) for r in rows] == \
        [(4, 0.0, 0.95), (4, 0.01, 0.9), (8, 0.1, 0.97)]
    save_png(beta_figure(rows), tmp_path / "sweep.png", dpi=80)
    assert_png(tmp_path / "sweep.png")


def _toy_state(classes: int, n: int = 40) -> dict:
    """A toy projections file as train_invertible writes it, from random points."""
    g = torch.Generator().manual_seed(0)
    xy = lambda: torch.randn(n, 2, generator=g)  # noqa: E731
    curve = torch.linspace(-2, 2, 30)[:, None].repeat(1, 2)
    curve[10:15] = float("nan")  # where the pair is not the top two
    pairs = [(0, 1)] if classes == 2 else [(0, 1), (0, 2), (1, 2)]
    return {"dataset": "blobs", "classes": [str(c) for c in range(classes)],
            "window": torch.tensor([[-3.0, -3.0], [3.0, 3.0]]),
            "train_x": xy(), "train_features": xy(), "train_y": torch.arange(n) % classes,
            "test_x": xy(), "test_features": xy(), "test_y": torch.arange(n) % classes,
            "projected": xy(), "projected_features": xy(),
            "curves": [{"classes": list(p), "inputs": curve, "features": curve} for p in pairs]}


def test_toy_boundary_two_and_three_classes(tmp_path):
    from xai.viz.render import toy_boundary

    for classes in (2, 3):
        save_png(toy_boundary(_toy_state(classes), [0, 5, 9]), tmp_path / f"toy{classes}.png", 80)
        assert_png(tmp_path / f"toy{classes}.png")


def test_vibi_grid_and_counterfactuals(tmp_path):
    from xai.data.prepared import Split
    from xai.explain.boundary import Guide
    from xai.models.invertible import image_classifier
    from xai.viz.render import (
        counterfactual_rows,
        counterfactuals,
        vibi_grid,
        vibi_panels,
    )

    g = torch.Generator().manual_seed(0)
    test = Split(torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8),
                 torch.tensor([0, 1, 0, 1, 0, 1]))
    probs = torch.rand(6, 2, 2, 2, generator=g)
    expl = {"chunk_probs": probs / probs.sum((1, 2, 3), keepdim=True),
            "top_k": probs > 0.5, "approximator_probs": torch.rand(6, 2, generator=g),
            "js": torch.rand(6, generator=g) * 0.6, "spec": {"explainer_type": "ResNet_4x"}}
    panels = vibi_panels(test, expl, torch.rand(6, 2, generator=g), [0, 2, 3, 5])
    save_png(vibi_grid(panels, ["a", "b"], k=2, beta=0.01, columns=3), tmp_path / "v.png", 80)
    assert_png(tmp_path / "v.png")

    net = image_classifier((1, 8, 8), 3, downsample=[2, 4], blocks=[1, 1], hidden=[4, 4],
                           kernel=[3, 1]).eval()
    x = test.x[:2].float() / 255
    rows = counterfactual_rows(net, x, target=2, margin=5.0)
    assert {r.kind for r in rows} <= {"runner-up", "target"} and len(rows) >= 2
    save_png(counterfactuals(rows, ["a", "b", "c"]), tmp_path / "cf.png", 80)
    assert_png(tmp_path / "cf.png")
    train_y = torch.arange(len(test.x)) % 3
    for direction in ("class_centres", "prototype"):
        guide = Guide.of(direction, net, test.x, train_y, 3, neighbours=2)
        rows = counterfactual_rows(net, x, target=2, margin=5.0, guide=guide)
        assert {r.along for r in rows} == {direction}
        save_png(counterfactuals(rows, ["a", "b", "c"]), tmp_path / f"cf_{direction}.png", 80)
        assert_png(tmp_path / f"cf_{direction}.png")


def test_cost_figure_labels_of_close_points_do_not_cover_each_other():
    """Three methods at nearly the same cost and fidelity: each label on a line of its own; a
    lone point keeps its label beside it."""
    points = {name: {"fidelity_k4": value, "seconds_per_image": 4e-3 * (1 + i / 20),
                     "amortised": 0.0}
              for i, (name, value) in enumerate([("gradient_shap", 0.920),
                                                 ("integrated_gradients", 0.919),
                                                 ("occlusion", 0.910)])}
    points["random"] = {"fidelity_k4": 0.5, "seconds_per_image": 2e-6, "amortised": 0.0}
    fig = cost_figure(points, "fidelity_k4")
    fig.canvas.draw()
    boxes = {t.get_text(): t.get_window_extent() for t in fig.axes[0].texts}
    close = [boxes[n] for n in ("gradient_shap", "integrated_gradients", "occlusion")]
    assert not any(a.overlaps(b) for i, a in enumerate(close) for b in close[i + 1:])
    lone = fig.axes[0].texts[[t.get_text() for t in fig.axes[0].texts].index("random")]
    assert lone.xyann == (5, 4)
    assert fig.axes[0].get_legend() is None  # the names are on the points; nothing covers them


def test_vibi_grid_titles_do_not_overlap_with_cifar_class_names():
    """The longest CIFAR-10 class names in every title of a full row: no title runs into its
    neighbour's or off the figure, and the legend covers no panel (the grid is read by its
    titles and images)."""
    from xai.viz.render import VibiPanel, vibi_grid

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    g = torch.Generator().manual_seed(0)
    panels = [VibiPanel(torch.rand(3, 32, 32, generator=g), torch.rand(1, 32, 32, generator=g),
                        torch.rand(1, 32, 32, generator=g) > 0.9, 1, label=1, blackbox=1,
                        approximator=1, js=0.1, blackbox_on_kept=on_kept)
              for on_kept in (1, 1, 0, 1, 1, 1)]
    fig = vibi_grid(panels, classes, k=64, beta=0.001, columns=3)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes
              if ax.get_visible() and ax.get_title()]
    assert len(titles) == 3 * len(panels)
    overlaps = [(a, b) for i, a in enumerate(titles) for b in titles[i + 1:] if a.overlaps(b)]
    assert not overlaps
    width = fig.bbox.width
    assert all(0 <= t.x0 and t.x1 <= width for t in titles)  # none cut by the figure's edge
    legend = fig.legends[0].get_window_extent(renderer)
    assert not [ax for ax in fig.axes if ax.get_visible()
                and ax.get_window_extent(renderer).overlaps(legend)]  # the legend hides no image
