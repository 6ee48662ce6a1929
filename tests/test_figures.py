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
