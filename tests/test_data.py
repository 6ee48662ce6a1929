"""Data preparation: every source, the prepared format, byte-identical re-runs, clear errors."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch

from stages import prepare, prepare_toy
from stages.raw_data import none_present
from tests.conftest import ROOT, image_tree, write_tar
from xai.data.prepared import load_dataset
from xai.data.sources import load_images, read_folder
from xai.data.toy import make_toy
from xai.errors import DataError
from xai.pipeline.config import load_config


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_torchvision_idx_files_are_prepared(dataset, idx_root, params, tmp_path):
    out = tmp_path / "images.pt"
    prepare.main(["--params", str(params({"data.dataset": dataset, "data.root": str(idx_root),
                                          "data.download": False})), "--out", str(out)])
    ds = load_dataset(out)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 20)
    assert ds.input_shape == (1, 28, 28) and ds.train.x.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.name == dataset
    assert sorted(torch.cat([ds.train.y, ds.val.y]).tolist()) == sorted(i % 10 for i in range(50))


def test_prepare_rerun_is_byte_identical(idx_root, params, tmp_path):
    p = params({"data.root": str(idx_root), "data.download": False})
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    prepare.main(["--params", str(p), "--out", str(first)])
    prepare.main(["--params", str(p), "--out", str(second)])
    assert first.read_bytes() == second.read_bytes()


def test_split_seed_changes_the_split_only(idx_root, params, tmp_path):
    a = load_images(load_config(params({"data.root": str(idx_root)})).data, idx_root)
    b = load_images(load_config(params({"data.split_seed": 1})).data, idx_root)
    assert not torch.equal(a.val.y, b.val.y) or not torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.test.x, b.test.x)


def test_subsets_are_seeded_ordered_and_off_by_default(idx_root, params):
    full = load_images(load_config(params({"data.root": str(idx_root)})).data, idx_root)
    cfg = load_config(params({"data.root": str(idx_root), "data.train_images": 20,
                              "data.test_images": 7})).data
    part, again = load_images(cfg, idx_root), load_images(cfg, idx_root)
    assert (len(part.train) + len(part.val), len(part.test)) == (20, 7)
    assert torch.equal(part.test.x, again.test.x) and torch.equal(part.val.x, again.val.x)
    rows = {bytes(x.numpy()): i for i, x in enumerate(full.test.x)}
    kept = [rows[bytes(x.numpy())] for x in part.test.x]  # the test images, in their own order
    assert kept == sorted(kept) and len(set(kept)) == 7
    assert not any(torch.equal(part.test.x[:7], full.test.x[i:i + 7]) for i in range(14))


def test_folder_archive_dir_and_zip_agree(tmp_path):
    files = image_tree()
    tree = tmp_path / "dir"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    shuffled = write_tar(tmp_path / "t.tgz", files, order=sorted(files, reverse=True))
    reads = [read_folder(p) for p in (tree, tmp_path / "t.zip", shuffled)]
    for other in reads[1:]:
        assert other.classes == reads[0].classes == ("cat", "dog", "emu")
        assert torch.equal(other.train_x, reads[0].train_x)
        assert torch.equal(other.test_y, reads[0].test_y)
    raw = reads[0]
    assert raw.train_x.shape == (18, 3, 8, 8) and raw.test_x.shape == (9, 3, 8, 8)
    # the first pixel of every image carries its class (see image_tree): labels line up
    assert torch.equal(raw.train_x[:, 0, 0, 0].long(), raw.train_y)


def test_folder_source_through_the_stage(folder_archive, params, tmp_path):
    out = tmp_path / "images.pt"
    p = params({"data.dataset": "folder", "data.root": str(tmp_path), "data.folder": "tiny.tar.gz",
                "data.val_fraction": 0.25})
    prepare.main(["--params", str(p), "--out", str(out)])
    ds = load_dataset(out)
    assert ds.name == "tiny" and ds.classes == ("cat", "dog", "emu")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (14, 4, 9)


def test_grey_folder_gives_one_channel(tmp_path):
    raw = read_folder(write_tar(tmp_path / "g.tar.gz", image_tree(colour=False)))
    assert raw.train_x.shape[1] == 1


@pytest.mark.parametrize("files, message", [
    ({}, "holds no images"),
    ({"x/train/a/1.png": b"not a png", "x/test/a/1.png": b"nope"}, "cannot decode"),
])
def test_bad_folders_give_clear_errors(tmp_path, files, message):
    with pytest.raises(DataError, match=message):
        read_folder(write_tar(tmp_path / "bad.tar.gz", files))


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"train/<class>/<image>"):
        read_folder(tmp_path / "nope.tar.gz")


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("cifar10", "cifar-10-batches-py")])
def test_missing_data_offline_exits_cleanly(dataset, folder, params, tmp_path):
    out = tmp_path / "out" / "images.pt"
    p = params({"data.dataset": dataset, "data.root": str(tmp_path / "empty"),
                "data.download": False})
    proc = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(p),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(tmp_path / "empty" / folder) in proc.stderr and "data.root" in proc.stderr
    assert not out.exists()


def test_toy_sets_match_the_reference_setup(params, tmp_path):
    out = tmp_path / "toy.pt"
    prepare_toy.main(["--params", str(params()), "--out", str(out)])
    moons = load_dataset(out)
    assert (len(moons.train), len(moons.test), moons.num_classes) == (600, 400, 2)
    assert moons.input_shape == (2,) and moons.train.x.dtype == torch.float32
    blobs = make_toy(load_config(params({"toy.dataset": "blobs"})).toy)
    assert blobs.num_classes == 3
    again = make_toy(load_config(params({"toy.dataset": "blobs"})).toy)
    assert torch.equal(blobs.train.x, again.train.x)


def test_raw_files_none_of_which_are_here_are_no_change_but_some_missing_are():
    recorded = {"dataset": "folder", "files": {"tree/a.png": "1a", "tree/b.png": "2b"}}
    assert none_present({"dataset": "folder", "files": {"tree": None}}, recorded)
    assert not none_present({"dataset": "folder", "files": {"tree/a.png": "1a",
                                                            "tree/b.png": None}}, recorded)
    assert not none_present({"dataset": "folder", "files": {"other": None}}, recorded)
    assert not none_present({"dataset": "mnist", "files": {"MNIST/raw/x": None}}, recorded)
    assert not none_present({"dataset": "folder", "files": {"tree": None}},
                            {"dataset": "folder", "files": {}})
