"""Fault injection on a tiny pipeline: kills, bad inputs, bad data sets, bad params, and the
machine's faults (a full disk, a folder that cannot be written).

Every case ends in a clear message (a `XaiError`, exit code 2, naming the file or key) or in a
documented conversion, and after each kill `dvc repro` brings the pipeline back to the same
metrics bit for bit. The case lists below are what `experiments/faults.py` counts for the
reliability table in docs/reliability.md (`tests/test_readme.py` keeps the two in step).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT, image_tree, write_params, write_tar
from tests.test_blackbox import TINY, stage_args, stage_files
from xai.data.prepared import load_dataset
from xai.data.sources import read_folder
from xai.errors import ConfigError, DataError, DiskFullError, UnwritableError, XaiError
from xai.evaluation.invertible import PROJECTIONS_KIND
from xai.io import (
    check_writable,
    load_torch,
    mount_point,
    save_csv,
    save_json,
    save_torch,
    transaction,
    write_bytes,
)
from xai.models.blackbox import load_blackbox, load_probabilities
from xai.models.invertible import IMAGE_KIND, TOY_KIND, load_classifier
from xai.models.judge import load_judge
from xai.models.vibi import load_vibi
from xai.pipeline.config import load_config
from xai.train.vibi import EXPLANATIONS_KIND

DVC = str(Path(sys.executable).with_name("dvc"))

# ----------------------------------------------------------------------------- the tiny pipeline

TINY_PIPELINE = {
    "device": "cpu", "data.dataset": "folder", "data.val_fraction": 0.25,
    "blackbox.channels": 4, "blackbox.epochs": 1, "blackbox.batch_size": 16,
    "blackbox.schedule": "constant",
    "toy.n_samples": 90, "toy.dataset": "blobs",
    "invertible.toy.epochs": 4, "invertible.toy.milestones": [2, 3],
    "invertible.toy.restarts": 2, "invertible.toy.batch_size": 16,
    "invertible.image.downsample": [2, 4], "invertible.image.blocks": [1, 1],
    "invertible.image.hidden": [4, 4], "invertible.image.kernel": [3, 1],
    "invertible.image.epochs": 1, "invertible.image.batch_size": 16,
    "invertible.image.eval_batch_size": 16,
    "vibi.width_multiplier": 0.25, "vibi.k": 1, "vibi.epochs": 1, "vibi.l2x_epochs": 1,
    "vibi.batch_size": 16, "vibi.warmup_steps": 0, "vibi.precision": "fp32",
    "judge.epochs": 1, "judge.batch_size": 16,
    "render.dpi": 40, "render.vibi_images": 2, "render.vibi_columns": 2,
    "render.counterfactual_images": 1, "render.counterfactual_target": None,
    "render.toy_points": 2,
    "evaluate.num_images": 8, "evaluate.budgets": [1, 2], "evaluate.curve_points": 3,
    "evaluate.ig_steps": 2, "evaluate.smoothgrad_samples": 2, "evaluate.shap_samples": 2,
    "evaluate.lime_samples": 8, "evaluate.robustness_images": 4, "evaluate.perturbations": 2,
    "evaluate.encoding_folds": 2, "evaluate.bootstrap": 10, "evaluate.batch_size": 64,
}
#: every stage of dvc.yaml, in pipeline order: each is SIGKILLed once at a random moment
KILL_STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _dvc(project: Path, *args: str) -> str:
    proc = subprocess.run([DVC, *args], cwd=project, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _metrics(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((project / "metrics").glob("*.json"))}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A git + DVC copy of the project on a tiny grey folder data set, reproduced once."""
    base = tmp_path_factory.mktemp("faults")
    write_tar(base / "tiny.tar.gz", image_tree(colour=False, per_class=32,
                                               classes=("left", "right")))
    project = base / "repo"
    project.mkdir()
    for name in ("dvc.yaml", "stages", "xai", "blackboxes"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    write_params(project / "params.yaml", {**TINY_PIPELINE, "data.root": str(base),
                                           "data.folder": "tiny.tar.gz"})
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")
    seconds = {}
    for stage in KILL_STAGES:  # one by one, to learn how long each takes
        start = time.monotonic()
        _dvc(project, "repro", "--single-item", stage)
        seconds[stage] = time.monotonic() - start
    assert "changed" not in _dvc(project, "status").replace("always changed", "")
    return project, _metrics(project), seconds


def _kill_stage_at(project: Path, stage: str, seconds: float) -> tuple[bool, float]:
    """Run `dvc repro --force <stage>` and SIGKILL the stage's process `seconds` after DVC
    started; returns whether it was killed (False if the stage ended first) and how long the
    run took."""
    dvc = subprocess.Popen([DVC, "repro", "--force", "--single-item", stage], cwd=project,
                           env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    deadline = started + seconds
    killed = False
    while dvc.poll() is None and not killed:
        if time.monotonic() >= deadline:
            for p in psutil.Process(dvc.pid).children(recursive=True):
                if any(a.startswith("stages.") for a in _cmdline(p)):
                    p.kill()
                    killed = True
        time.sleep(0.005)
    dvc.wait(timeout=300)
    return killed, time.monotonic() - started


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_sigkill_at_a_random_point_then_dvc_repro_restores_the_same_metrics(pipeline, stage):
    """The moment is uniform over the stage's run (DVC's start-up included); printed. A stage
    that ends before the moment (it ran faster than when it was timed, e.g. on a quieter host)
    completes normally, and the moment is drawn again over the run just seen (3 tries)."""
    project, metrics, seconds = pipeline
    draw = random.Random(f"{stage}-{time.time_ns()}")
    duration, killed = seconds[stage], False
    for _ in range(3):
        at = draw.uniform(0.05, 0.9) * duration
        print(f"SIGKILL of {stage} {at:.2f} s into its {duration:.2f} s")
        killed, duration = _kill_stage_at(project, stage, at)
        if killed:
            break
    assert killed, f"{stage} ended before every moment drawn"
    _dvc(project, "repro")
    assert _metrics(project) == metrics
    status = _dvc(project, "status")
    assert "changed" not in status.replace("always changed", ""), status
    assert not list(project.rglob(".*.tmp")) and not list(project.rglob(".*.xai-commit"))


# ----------------------------------------------------------------------------- inputs

#: every file a stage reads, by its path in dvc.yaml, with the loader the stages use for it
LOADERS = {
    "data/prepared/images.pt": load_dataset,
    "data/prepared/toy.pt": load_dataset,
    "models/blackbox.pt": load_blackbox,
    "models/blackbox_probs.pt": load_probabilities,
    "models/judge.pt": load_judge,
    "models/l2x.pt": load_vibi,
    "models/vibi.pt": load_vibi,
    "models/invertible_toy.pt": lambda p: load_classifier(p, TOY_KIND),
    "models/invertible_image.pt": lambda p: load_classifier(p, IMAGE_KIND),
    "outputs/invertible_toy_projections.pt": lambda p: load_torch(p, kind=PROJECTIONS_KIND),
    "outputs/vibi_test_explanations.pt": lambda p: load_torch(p, kind=EXPLANATIONS_KIND),
}
INPUT_FAULTS = ["missing", "empty", "truncated", "garbage", "foreign_torch", "other_kind"]
INPUT_CASES = [(path, fault) for path in LOADERS for fault in INPUT_FAULTS]


def _damage(path: Path, fault: str, other: Path) -> None:
    data = path.read_bytes()
    if fault == "missing":
        path.unlink()
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif fault == "foreign_torch":  # a torch file, but not one of ours
        torch.save([torch.ones(3)], path)
    elif fault == "other_kind":  # one of ours, of another kind
        shutil.copy(other, path)


@pytest.mark.parametrize(("path", "fault"), INPUT_CASES)
def test_a_damaged_input_gives_a_clear_error_naming_it(pipeline, tmp_path, path, fault):
    project = pipeline[0]
    target = tmp_path / Path(path).name
    shutil.copy(project / path, target)
    other = project / ("models/judge.pt" if "judge" not in path else "models/blackbox.pt")
    _damage(target, fault, other)
    with pytest.raises(XaiError) as error:
        LOADERS[path](target)
    message = str(error.value)
    assert str(target) in message and "\n" not in message and "Traceback" not in message


def test_a_damaged_input_stops_the_real_stage_with_exit_2_and_one_line(pipeline, tmp_path):
    project = pipeline[0]
    model = tmp_path / "blackbox.pt"
    model.write_bytes((project / "models/blackbox.pt").read_bytes()[:1000])
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train_judge", "--params", str(project / "params.yaml"),
         "--data", str(project / "data/prepared/images.pt"),
         "--probs", str(project / "models/blackbox_probs.pt"), "--blackbox", str(model),
         *[a for name in ("model", "metrics", "timings", "plots")
           for a in (f"--{name}", str(tmp_path / f"out_{name}"))]],
        cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"train_judge: error: {model} is not a readable xai.blackbox file, truncated or corrupt "
        + proc.stderr.split("corrupt ", 1)[1].strip()]
    assert not list(tmp_path.glob("out_*"))


# ----------------------------------------------------------------------------- folder data sets


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _tree(**changes: bytes | None) -> dict[str, bytes]:
    """A colour 8 x 8 tree with `changes` (name relative to tree/, None removes the file)."""
    files = image_tree()
    for name, data in changes.items():
        key = f"tree/{name.replace('__', '/')}"
        if data is None:
            files.pop(key, None)
        else:
            files[key] = data
    return files


GREY = np.full((8, 8), 90, np.uint8)
RGB = np.full((8, 8, 3), 90, np.uint8)
#: (case, files of the tree, extra empty folders, image_size, expected: a shape or an error)
FOLDER_CASES = [
    ("corrupt_image", _tree(**{"train/cat/bad.png": b"\x89PNG garbage"}),
     [], None, r"cannot decode image tree/train/cat/bad\.png"),
    ("truncated_image", _tree(**{"train/dog/000.png": _png(RGB)[:40]}), [], None,
     r"cannot decode image tree/train/dog/000\.png"),
    ("empty_image_file", _tree(**{"test/emu/000.png": b""}), [], None,
     r"cannot decode image tree/test/emu/000\.png"),
    ("image_suffix_on_text", _tree(**{"train/cat/notes.jpg": b"just text"}), [], None,
     r"cannot decode image tree/train/cat/notes\.jpg"),
    ("grey_among_colour", _tree(**{"train/cat/000.png": _png(GREY)}), [], None, (3, 8, 8)),
    ("rgba_among_colour", _tree(**{"train/dog/001.png": _png(RGB, "RGBA")}), [], None,
     (3, 8, 8)),
    ("palette_image", _tree(**{"test/cat/000.png": _png(RGB, "P")}), [], None, (3, 8, 8)),
    ("grey_with_alpha", _tree(**{"train/emu/002.png": _png(GREY, "LA")}), [], None, (3, 8, 8)),
    ("non_image_files_skipped", _tree(**{"train/cat/Thumbs.db": b"x", "README.txt": b"x",
                                         "train/dog/.DS_Store": b"x"}), [], None, (3, 8, 8)),
    ("mixed_size", _tree(**{"train/cat/000.png": _png(np.zeros((10, 12, 3), np.uint8))}), [],
     None, r"all images must have one size: .*set `image_size`"),
    ("mixed_size_resized", _tree(**{"train/cat/000.png": _png(np.zeros((10, 12, 3), np.uint8))}),
     [], (6, 7), (3, 6, 7)),
    ("test_size_differs", {k: (_png(np.zeros((9, 9, 3), np.uint8)) if "/test/" in k else v)
                           for k, v in image_tree().items()}, [], None,
     r"train images are \(8, 8\), test images \(9, 9\).*`image_size`"),
    ("empty_class_folder", _tree(), ["tree/train/fox"], None,
     r"class folder tree/train/fox holds no images"),
    ("class_folder_without_images", _tree(**{"train/fox/notes.txt": b"x"}), [], None,
     r"class folder tree/train/fox holds no images"),
    ("test_class_without_training_images", _tree(**{"test/fox/000.png": _png(RGB)}), [], None,
     r"test classes \['fox'\] have no training images"),
    ("no_test_split", {k: v for k, v in image_tree().items() if "/test/" not in k}, [], None,
     r"holds no images in train/<class>/<image> and test/<class>/<image>"),
    ("two_trees", {**image_tree(), **{k.replace("tree/", "copy/"): v
                                      for k, v in image_tree().items()}}, [], None,
     r"more than one train/test tree"),
]


@pytest.mark.parametrize("form", ["folder", "archive"])
@pytest.mark.parametrize(("case", "files", "folders", "size", "expected"), FOLDER_CASES,
                         ids=[c[0] for c in FOLDER_CASES])
def test_a_faulty_folder_data_set_is_converted_or_named(tmp_path, form, case, files, folders,
                                                        size, expected):
    if form == "folder":
        path = tmp_path / "set"
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        for folder in folders:
            (path / folder).mkdir(parents=True)
    else:
        path = tmp_path / "set.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name in sorted(files):
                info = tarfile.TarInfo(name)
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            for folder in folders:  # an empty folder is a directory entry of its own
                info = tarfile.TarInfo(folder)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            read_folder(path, size)
    else:
        raw = read_folder(path, size)
        assert tuple(raw.train_x.shape[1:]) == tuple(raw.test_x.shape[1:]) == expected
        assert raw.classes == ("cat", "dog", "emu")


def test_corrupt_archives_are_named(tmp_path):
    for name in ("set.tar.gz", "set.zip"):
        path = tmp_path / name
        path.write_bytes(b"not an archive at all")
        with pytest.raises(DataError, match=f"{path} is not a readable"):
            read_folder(path)


# ----------------------------------------------------------------------------- params.yaml

#: (case, params.yaml text or dotted overrides, the start of the one-line message)
PARAM_CASES = [
    ("not_yaml", "seed: [0\n", "is not valid YAML"),
    ("a_list", "- 1\n- 2\n", "params.yaml must be a mapping"),
    ("a_scalar", "42\n", "params.yaml must be a mapping"),
    ("section_not_mapping", {"vibi": 3}, "vibi must be a mapping"),
    ("unknown_key", {"vibi.kk": 3}, "unknown key 'vibi.kk'"),
    ("float_for_int", {"vibi.k": 2.0}, "vibi.k = 2.0 has the wrong type"),
    ("float_for_choice", {"vibi.xpl_channels": 1.0}, "vibi.xpl_channels = 1.0 is not allowed"),
    ("string_for_float", {"vibi.lr": "fast"}, "vibi.lr = 'fast' has the wrong type"),
    ("bool_for_int", {"seed": True}, "seed = True has the wrong type"),
    ("nan", {"vibi.lr": float("nan")}, "vibi.lr = nan has the wrong type"),
    ("infinite", {"blackbox.lr": float("inf")}, "blackbox.lr = inf has the wrong type"),
    ("negative", {"blackbox.epochs": 0}, "blackbox.epochs = 0 is out of range"),
    ("seed_too_large", {"seed": 2**40}, f"seed = {2**40} is out of range"),
    ("tau_too_small", {"vibi.tau_end": 1e-30}, "vibi.tau_end = 1e-30 is out of range"),
    ("tau_rises", {"vibi.tau_start": 0.5, "vibi.tau_end": 0.9}, "vibi.tau_end = 0.9 is above"),
    ("empty_string", {"tracking.experiment": " "}, "tracking.experiment = ' ' has the wrong"),
    ("unknown_choice", {"blackbox.arch": "vgg"}, "blackbox.arch = 'vgg' is not allowed"),
    ("bad_device", {"device": "gpu"}, "device = 'gpu' is not allowed"),
    ("k_beyond_chunks", {"vibi.k": 100}, "vibi.k = 100"),
    ("budget_beyond_chunks", {"evaluate.budgets": [1, 1000]}, "evaluate.budgets"),
    ("robustness_beyond_images", {"evaluate.robustness_images": 600},
     "evaluate.robustness_images = 600 is out of range"),
    ("image_size_three_numbers", {"data.dataset": "folder", "data.folder": "x.tar.gz",
                                  "data.image_size": [8, 8, 3]},
     "data.image_size = [8, 8, 3] is not allowed"),
    ("image_size_too_small", {"data.dataset": "folder", "data.folder": "x.tar.gz",
                              "data.image_size": 1}, "data.image_size = 1 is out of range"),
    ("image_size_for_mnist", {"data.image_size": 32}, "data.image_size = 32 is not allowed"),
    ("folder_without_path", {"data.dataset": "folder"}, "data.folder is required"),
    ("milestones_unsorted", {"invertible.toy.milestones": [40, 20]},
     "invertible.toy.milestones = [40, 20] is not allowed"),
]


@pytest.mark.parametrize(("case", "params_text", "message"), PARAM_CASES,
                         ids=[c[0] for c in PARAM_CASES])
def test_malformed_params_name_key_value_and_what_is_allowed(tmp_path, case, params_text,
                                                             message):
    path = tmp_path / "params.yaml"
    if isinstance(params_text, str):
        path.write_text(params_text)
    else:
        write_params(path, params_text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value) or case == "not_yaml"


def test_malformed_params_stop_a_real_stage_with_exit_2_before_any_work(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"vibi.xpl_channels": 1.0})
    proc = subprocess.run([sys.executable, "-m", "stages.prepare_toy", "--params", str(path),
                           "--out", str(tmp_path / "toy.pt")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "prepare_toy: error: vibi.xpl_channels = 1.0 is not allowed; choose one of: 1, 3"]
    assert not (tmp_path / "toy.pt").exists()


# ----------------------------------------------------------------------------- the machine's faults

#: every kind of output a stage writes through xai.io (models, metrics, plots, figures)
OUTPUT_WRITERS = {
    "torch": lambda path: save_torch({"kind": "test", "w": torch.arange(4000.0)}, path),
    "json": lambda path: save_json({"loss": [i / 7 for i in range(200)]}, path),
    "csv": lambda path: save_csv([{"epoch": i, "loss": i / 7} for i in range(200)], path),
    "png": lambda path: write_bytes(path, _png(np.arange(64 * 64 * 3, dtype=np.uint8)
                                                .reshape(64, 64, 3))),
}
#: where the disk fills up: before the first byte, half-way, before the last byte
FULL_AT = ("first", "middle", "last")
DISK_FULL_CASES = [(kind, where) for kind in OUTPUT_WRITERS for where in FULL_AT]


@contextlib.contextmanager
def _disk_full_at(monkeypatch, folder: Path, where: str):
    """`os.write` to files in `folder` writes until the byte `where` of the data, then ENOSPC."""
    real = os.write
    left: list[int] = []

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}{os.sep}"):
            return real(fd, data)
        if not left:  # the first call is given all the data (xai.io writes 16 MiB at a time)
            left.append({"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where])
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, bytes(data[:left[0]]))
        left[0] -= written
        return written

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", write)
        yield


@pytest.mark.parametrize(("kind", "where"), DISK_FULL_CASES)
def test_a_full_disk_at_any_byte_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                          kind, where):
    target = tmp_path / f"output.{kind}"
    target.write_bytes(b"the previous version")
    with _disk_full_at(monkeypatch, tmp_path, where), pytest.raises(DiskFullError) as error:
        OUTPUT_WRITERS[kind](target)
    message = str(error.value)
    assert message.startswith(f"cannot write {target}: the disk is full (no space left on device; "
                              f"filesystem mounted at {mount_point(tmp_path)}, ")
    assert "bytes free" in message and "\n" not in message
    assert error.value.exit_code == 3
    assert target.read_bytes() == b"the previous version"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_a_full_disk_in_a_transaction_keeps_every_previous_output(tmp_path, monkeypatch):
    """A full disk at the second output, or at the commit's journal, leaves both outputs."""
    first, second = tmp_path / "metrics.json", tmp_path / "models" / "model.pt"
    for path in (first, second):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"previous")
    with _disk_full_at(monkeypatch, second.parent, "middle"), \
            pytest.raises(DiskFullError, match="model.pt"), transaction():
        save_json({"a": 1}, first)
        OUTPUT_WRITERS["torch"](second)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("xai.io._write_durably", lambda path, data: (path.write_bytes(data[:3]),
                                                                     _raise(full)))
    with pytest.raises(DiskFullError, match="xai-commit: the disk is full"), transaction():
        save_json({"a": 1}, first)
        OUTPUT_WRITERS["torch"](second)
    for path in (first, second):
        assert path.read_bytes() == b"previous"
        assert [p.name for p in path.parent.iterdir() if p.is_file()] == [path.name]


def _raise(exc: BaseException):
    raise exc


def _shim_env(**faults: str) -> dict[str, str]:
    """The environment of a stage subprocess with tests/shims/sitecustomize.py's `faults`."""
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "shims"), str(ROOT),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **faults}


def _blackbox_stage(tmp_path: Path, tiny_images: Path, **faults: str):
    """Run train_blackbox on the tiny set, the model in models/, every output there before."""
    files = stage_files(tmp_path / "out")
    files["model"] = tmp_path / "models" / "model.pt"
    for path in files.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"previous")
    params = write_params(tmp_path / "params.yaml", TINY)
    proc = subprocess.run([sys.executable, "-m", "stages.train_blackbox",
                           *stage_args(params, tiny_images, files)], check=False, cwd=ROOT,
                          env=_shim_env(**faults), capture_output=True, text=True, timeout=300)
    return proc, files


def test_a_full_disk_stops_a_real_stage_with_exit_3_and_one_line(tmp_path, tiny_images):
    proc, files = _blackbox_stage(tmp_path, tiny_images,
                                     XAI_TEST_FULL_DISK=f"{tmp_path / 'models'}{os.sep}")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"train_blackbox: error: cannot write {files['model']}: the disk "
                                f"is full (no space left on device; filesystem mounted at "
                                f"{mount_point(tmp_path)}, ")
    assert "Traceback" not in proc.stderr and all("error" not in line for line in lines[:-1])
    for path in files.values():  # the previous outputs, and no temporary file
        assert path.read_bytes() == b"previous"
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


#: how an output folder refuses to be written: errors of the probe (injected), and a real
#: PermissionError from `os.open` at the probe's and at a write's temporary file
UNWRITABLE_CASES = ["probe_EACCES", "probe_EPERM", "probe_EROFS", "os_open_probe", "os_open_write"]


@pytest.mark.parametrize("case", UNWRITABLE_CASES)
def test_an_unwritable_folder_is_named_with_exit_4(tmp_path, monkeypatch, case):
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "model.pt"
    target.write_bytes(b"previous")
    code = getattr(errno, case.split("_")[-1], errno.EACCES)

    def refuse(path, *args, **kwargs):
        if os.path.dirname(os.path.abspath(path)) == str(folder):
            raise PermissionError(code, os.strerror(code), path)
        return real_open(path, *args, **kwargs)

    real_open = os.open
    with pytest.raises(UnwritableError) as error:
        if case.startswith("probe_"):
            check_writable(tmp_path / "metrics.json", target,
                           probe=lambda f: _raise(OSError(code, os.strerror(code)))
                           if f == folder else None)
        else:
            monkeypatch.setattr(os, "open", refuse)
            if case == "os_open_probe":
                check_writable(tmp_path / "metrics.json", target)
            else:
                save_torch({"kind": "test"}, target)
    monkeypatch.undo()
    message = str(error.value)
    subject = f"cannot write {target}" if case == "os_open_write" else \
        f"cannot write outputs into {folder}"
    assert message == (f"{subject}: the folder {folder} is not writable ({os.strerror(code)}); "
                       "make it writable (owner, mode, read-only mount) or write the outputs "
                       "elsewhere")
    assert error.value.exit_code == 4
    assert target.read_bytes() == b"previous" and sorted(os.listdir(folder)) == ["model.pt"]


def test_an_unwritable_folder_stops_a_real_stage_with_exit_4_before_training(tmp_path,
                                                                              tiny_images):
    proc, files = _blackbox_stage(tmp_path, tiny_images,
                                  XAI_TEST_UNWRITABLE=str(tmp_path / "models"))
    assert proc.returncode == 4, proc.stderr
    # one line: no training began (training prints its epochs on stderr)
    assert proc.stderr.strip().splitlines() == [
        (f"train_blackbox: error: cannot write outputs into {tmp_path / 'models'}: the folder "
         f"{tmp_path / 'models'} is not writable (Permission denied); make it writable (owner, "
         "mode, read-only mount) or write the outputs elsewhere")]
    for path in files.values():
        assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.glob("*/.*")] == []


def _sqlite_full() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database or disk is full")


def _wrapped_sqlite_full() -> Exception:
    """What MLflow's sqlite store raises when its disk fills (mlflow.store.db.utils wraps the
    SQLAlchemy error of a failed session)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from sqlalchemy.exc import OperationalError

    return MlflowException(message=OperationalError("INSERT INTO metrics", {}, _sqlite_full()),
                           error_code=TEMPORARILY_UNAVAILABLE)


def _raw_sqlalchemy_full() -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO metrics", {}, _sqlite_full())


#: a tracking store whose disk fills up mid-stage, as each store would say it
STORE_FULL_CASES = {
    "sqlite_store": (_wrapped_sqlite_full, "database or disk is full"),
    "sqlalchemy_unwrapped": (_raw_sqlalchemy_full, "database or disk is full"),
    "sqlite3_unwrapped": (_sqlite_full, "database or disk is full"),
    "file_store_enospc": (lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                          "No space left on device"),
}


@pytest.mark.parametrize("case", list(STORE_FULL_CASES))
def test_a_full_tracking_store_mid_stage_warns_once_and_writes_the_outputs(
        tiny_images, tmp_path, monkeypatch, capsys, case):
    """The store's disk fills once the stage has started (every metrics batch fails): one
    warning, the same outputs as without tracking, and the store stays readable."""
    from mlflow.tracking import MlflowClient

    from stages import train_blackbox

    reference = stage_files(tmp_path / "reference")
    train_blackbox.main(stage_args(write_params(tmp_path / "ref.yaml", TINY), tiny_images,
                                   reference))
    make_error, says = STORE_FULL_CASES[case]
    real = MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics:
            raise make_error()
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = stage_files(tmp_path / "out")
    params = write_params(tmp_path / "params.yaml",
                          {**TINY, "tracking.enabled": True, "tracking.uri": uri})
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_batch", log_batch)
        train_blackbox.main(stage_args(params, tiny_images, files))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning: tracking lost" in line]
    assert len(warnings) == 1 and says in warnings[0] and "Traceback" not in err, err
    for name in ("model", "probs", "metrics"):  # (plots and timings hold wall times)
        assert files[name].read_bytes() == reference[name].read_bytes(), name
    runs = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()],
        filter_string="tags.`xai.stage` = 'train_blackbox'")
    assert [r.info.status for r in runs] == ["RUNNING"]  # readable; the run left unfinished


def test_a_full_sqlite_store_stops_tracking_a_real_stage_with_one_warning(tmp_path, tiny_images):
    """The real path: MLflow's sqlite store fails to commit metrics ("database or disk is
    full", injected in SQLAlchemy's session by tests/shims); the stage prints one warning and no
    traceback, exits 0 with its outputs, and the store stays readable."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = stage_files(tmp_path / "out")
    params = write_params(tmp_path / "params.yaml",
                          {**TINY, "tracking.enabled": True, "tracking.uri": uri})
    proc = subprocess.run([sys.executable, "-m", "stages.train_blackbox",
                           *stage_args(params, tiny_images, files)], check=False, cwd=ROOT,
                          env=_shim_env(XAI_TEST_SQLITE_FULL="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning: tracking lost" in line]
    assert len(warnings) == 1 and "database or disk is full" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr and "SQLAlchemy database error" not in proc.stderr
    assert all(path.is_file() for path in files.values())
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`xai.stage` = 'train_blackbox'")
    assert [r.info.status for r in runs] == ["RUNNING"]


def _stage_of(project: Path, name: str, module: str) -> psutil.Process | None:
    """The process of stage `module` of queued experiment `name` of `project` (DVC runs it in a
    copy under .dvc/tmp/exps, with DVC_EXP_NAME set)."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cwd, cmdline = proc.info["cwd"] or "", proc.info["cmdline"] or []
        if f"stages.{module}" in cmdline and cwd.startswith(str(project)):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("DVC_EXP_NAME") == name:
                    return proc
    return None


def _exp_metrics(project: Path, path: str) -> dict[str, object]:
    """`dvc exp show`'s metrics file `path` of every experiment, by name."""
    shown = json.loads(subprocess.run([DVC, "exp", "show", "--json"], cwd=project, env=_env(),
                                      capture_output=True, text=True, check=True).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get(path)
                if rev.get("name") and metrics and "data" in metrics:
                    found[rev["name"]] = metrics["data"]
    return found


def _has_run(project: Path, name: str, stage: str) -> bool:
    """Whether experiment `name` has opened the MLflow run of `stage` (read straight from the
    sqlite file, read-only, while the stages write to it)."""
    db = project / "mlflow.db"
    if not db.is_file():
        return False
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("SELECT count(*) FROM tags WHERE key = 'dvc.exp_name' AND value = ? "
                           "AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'xai.stage' "
                           "AND value = ?)", (name, stage)).fetchone()[0] > 0
    return False


#: the experiments of the queue case: two at once, one of them SIGKILLed mid-stage (~2 s of
#: training each on 2 cores)
QUEUE_EPOCHS = 60


def test_a_queue_worker_killed_mid_stage_fails_its_experiment_alone(tmp_path):
    """`dvc queue start -j 2` runs two experiments of the same params; the stage process of one
    is SIGKILLed mid-stage (once its MLflow run is open): the other finishes and logs to the shared MLflow store, which stays
    readable, the killed one shows as failed, and queued again (forced, not from the run cache)
    it gives the other's metrics, those of a clean run. About 70 s on 2 busy cores (three
    experiments, two queue starts), the slowest case of this file."""
    from mlflow.tracking import MlflowClient

    from tests.test_pipeline import _stop_workers

    project = tmp_path / "repo"
    project.mkdir()
    for name in ("dvc.yaml", "stages", "xai", "blackboxes"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    write_params(project / "params.yaml", {**TINY_PIPELINE, "tracking.enabled": True,
                                           "data.root": str(tmp_path), "data.folder": "none"})
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")
    _dvc(project, "repro", "prepare_toy")  # (the toy chain alone: no image data set needed)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"],
                   cwd=project, check=True)

    def queue(name: str) -> None:
        _dvc(project, "exp", "run", "--queue", "--force", "-S",
             f"invertible.toy.epochs={QUEUE_EPOCHS}", "-n", name, "train_invertible_toy")

    def wait_for_queue(log: str, jobs: int, kill: str | None = None) -> str:
        with (tmp_path / log).open("w") as out:  # (not a pipe: see tests/test_pipeline.py)
            subprocess.run([DVC, "queue", "start", "-j", str(jobs)], cwd=project, env=_env(),
                           stdout=out, stderr=subprocess.STDOUT, check=True)
        deadline = time.monotonic() + 240
        try:
            while kill is not None and time.monotonic() < deadline:
                stage = _stage_of(project, kill, "train_invertible")
                if stage is not None and _has_run(project, kill, "train_invertible"):
                    stage.kill()
                    kill = None
                time.sleep(0.05)
            assert kill is None, (tmp_path / log).read_text()
            while time.monotonic() < deadline:
                status = subprocess.run([DVC, "queue", "status"], cwd=project, env=_env(),
                                        capture_output=True, text=True, check=False).stdout
                if "Running" not in status and "Queued" not in status:
                    return status
                time.sleep(1)
            raise AssertionError(f"the queue did not finish:\n{status}")
        finally:
            _stop_workers(project)
            workers = [q for q in psutil.process_iter(["cmdline", "cwd"])
                       if q.info["cwd"] == str(project)
                       and "queue-worker" in " ".join(q.info["cmdline"] or [])]
            for q in psutil.wait_procs(workers, timeout=20)[1]:  # gone before the next start
                q.kill()

    queue("killed")
    queue("other")
    status = wait_for_queue("queue.log", 2, kill="killed")
    rows = {line.split()[1]: line for line in status.splitlines()[1:] if len(line.split()) > 2}
    assert "Failed" in rows["killed"] and "Success" in rows["other"], status

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")  # readable after the kill
    runs = client.search_runs([client.get_experiment_by_name("xai").experiment_id],
                              "tags.`xai.stage` = 'train_invertible'")
    by_exp = {r.data.tags.get("dvc.exp_name"): r.info.status for r in runs}
    assert by_exp == {"other": "FINISHED", "killed": "RUNNING"}, by_exp  # killed mid-run

    queue("again")
    status = wait_for_queue("queue2.log", 1)
    assert "Success" in next(line for line in status.splitlines() if " again " in line), status
    metrics = _exp_metrics(project, "metrics/invertible_toy.json")
    assert metrics["again"] == metrics["other"] and "killed" not in metrics, metrics


def test_the_committed_counts_in_the_readme_match_these_case_lists():
    """experiments/reliability.json (docs/reliability.md's table) was made from the cases above."""
    results = json.loads((ROOT / "experiments/reliability.json").read_text())
    tried = {t["test"]: t["cases"] for t in results["tests"]
             if t["file"] == "tests/test_faults.py"}
    assert tried["test_sigkill_at_a_random_point_then_dvc_repro_restores_the_same_metrics"] == \
        len(KILL_STAGES)
    assert tried["test_a_damaged_input_gives_a_clear_error_naming_it"] == len(INPUT_CASES)
    assert tried["test_a_faulty_folder_data_set_is_converted_or_named"] == 2 * len(FOLDER_CASES)
    assert tried["test_malformed_params_name_key_value_and_what_is_allowed"] == len(PARAM_CASES)
    assert tried["test_a_full_disk_at_any_byte_names_the_file_and_keeps_the_previous_one"] == \
        len(DISK_FULL_CASES)
    assert tried["test_an_unwritable_folder_is_named_with_exit_4"] == len(UNWRITABLE_CASES)
    assert tried["test_a_full_tracking_store_mid_stage_warns_once_and_writes_the_outputs"] == \
        len(STORE_FULL_CASES)
    assert results["failures"] == 0
