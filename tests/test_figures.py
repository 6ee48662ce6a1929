"""Figures render headless into non-empty PNGs."""

from __future__ import annotations

from PIL import Image

from xai.figures import read_rows, save_png, training_curves
from xai.io import save_csv


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
    from xai.sweep import beta_figure, sweep_points
    from xai.tracking import RunRecord

    def rec(t, k, beta, fid):
        return RunRecord(str(t), "", "FINISHED", t, {"vibi.k": str(k), "vibi.beta": str(beta)},
                         {"test_fidelity": fid, "mean_kl": 1.0 - beta}, {})

    rows = sweep_points([rec(1, 4, 0.01, 0.5), rec(2, 4, 0.01, 0.9), rec(3, 4, 0.0, 0.95),
                         rec(4, 8, 0.1, 0.97)])
    assert [(r["k"], r["beta"], r["test_fidelity"]) for r in rows] == \
        [(4, 0.0, 0.95), (4, 0.01, 0.9), (8, 0.1, 0.97)]
    save_png(beta_figure(rows), tmp_path / "sweep.png", dpi=80)
    assert_png(tmp_path / "sweep.png")
