"""Raw image sources: torchvision's MNIST / Fashion-MNIST / CIFAR-10, or a class-per-folder tree.

Each source returns whole splits as uint8 tensors (N x C x H x W) plus class names. torchvision's
own dataset classes read their on-disk layout under `data.root` and download when the files are
missing and `data.download` is on; a class-per-folder tree (`train/<class>/*`, `test/<class>/*`)
may also be a .tar.gz/.tgz/.tar/.zip archive, read without extracting it.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from xai.pipeline.config import DataConfig
from xai.data.prepared import Dataset, Split, train_val_split
from xai.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class RawImages:
    """Both splits of an image source, as uint8 N x C x H x W tensors and int64 labels."""

    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_images(cfg: DataConfig, root: Path) -> Dataset:
    """Read the configured image source under `root` and split off the validation set."""
    if cfg.dataset == "folder":
        folder = Path(cfg.folder)  # type: ignore[arg-type]  # required by DataConfig
        raw = read_folder(folder if folder.is_absolute() else root / folder)
        name = _archive_stem(folder)
    else:
        raw, name = read_torchvision(cfg.dataset, root, cfg.download), cfg.dataset
    train, val = train_val_split(raw.train_x, raw.train_y, cfg.val_fraction, cfg.split_seed)
    return Dataset(name, raw.classes, train, val, Split(raw.test_x, raw.test_y))


# ----------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TorchvisionSet:
    title: str
    folder: str  # what torchvision keeps under root
    files: tuple[str, ...]  # the files it expects inside that folder

    def layout(self, root: Path) -> str:
        return ", ".join(str(root / self.folder / f) for f in self.files)


_MNIST_FILES = ("raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte",
                "raw/t10k-images-idx3-ubyte", "raw/t10k-labels-idx1-ubyte")
TORCHVISION_SETS = {
    "mnist": _TorchvisionSet("MNIST", "MNIST", _MNIST_FILES),
    "fashion_mnist": _TorchvisionSet("Fashion-MNIST", "FashionMNIST", _MNIST_FILES),
    "cifar10": _TorchvisionSet("CIFAR-10", "cifar-10-batches-py",
                               tuple(f"data_batch_{i}" for i in range(1, 6))
                               + ("test_batch", "batches.meta")),
}


def _torchvision_class(name: str) -> type:
    import torchvision.datasets as tvd

    return {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]


def read_torchvision(name: str, root: Path, download: bool) -> RawImages:
    """Read MNIST, Fashion-MNIST or CIFAR-10 through torchvision, downloading if allowed."""
    spec, cls = TORCHVISION_SETS[name], _torchvision_class(name)
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:
        if not download:
            raise DataError(_missing_message(spec, root, "data.download is false")) from None
        train, test = _download(spec, cls, root)
    return RawImages(tuple(train.classes), *_tensors(train), *_tensors(test))


def _download(spec: _TorchvisionSet, cls: type, root: Path) -> tuple[object, object]:
    target = root / spec.folder
    existed = target.exists()
    print(f"{spec.title} not found under {root}; downloading it there ...")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(str(root), train=True, download=True), cls(str(root), train=False)
    except (RuntimeError, OSError) as exc:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(_missing_message(spec, root, f"the download failed: {reason}")) from None
    finally:
        socket.setdefaulttimeout(previous)


def _missing_message(spec: _TorchvisionSet, root: Path, why: str) -> str:
    return (
        f"{spec.title} not found under {root} ({why}).\n"
        f"  expected torchvision's layout: {spec.layout(root)}\n"
        f"  copy the files there, or point data.root at a folder that holds {spec.folder}/ "
        f"(e.g. dvc exp run -S data.root=/path/to/datasets)"
    )


def _tensors(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data  # type: ignore[attr-defined]
    x = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # N x C x H x W
    y = torch.as_tensor(ds.targets, dtype=torch.int64)  # type: ignore[attr-defined]
    return x.to(torch.uint8).contiguous(), y


# ----------------------------------------------------------------------------- folder tree


def read_folder(path: Path) -> RawImages:
    """Read a class-per-folder tree with train/ and test/ inside (a folder or an archive)."""
    if not path.exists():
        raise DataError(
            f"image folder {path} not found; expected a folder (or {'/'.join(ARCHIVE_SUFFIXES)} "
            "archive) holding train/<class>/<image> and test/<class>/<image> "
            "(set data.folder, relative to data.root or absolute)"
        )
    entries: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    prefixes: set[PurePosixPath] = set()
    for name, read in tqdm(_members(path), desc=f"reading {path.name}", unit="img",
                           mininterval=1.0):
        parts = PurePosixPath(name)
        if parts.suffix.lower() not in IMAGE_SUFFIXES or len(parts.parts) < 3:
            continue
        split, label = parts.parts[-3], parts.parts[-2]
        if split in entries:
            prefixes.add(parts.parent.parent.parent)
            entries[split].append((label, name, read()))
    if not entries["train"] or not entries["test"]:
        raise DataError(
            f"{path} holds no images in train/<class>/<image> and test/<class>/<image> "
            f"(found {len(entries['train'])} train, {len(entries['test'])} test images)"
        )
    if len(prefixes) > 1:
        raise DataError(f"{path} holds more than one train/test tree: {sorted(map(str, prefixes))}")
    classes = tuple(sorted({label for label, _, _ in entries["train"]}))
    unknown = sorted({label for label, _, _ in entries["test"]} - set(classes))
    if unknown:
        raise DataError(f"{path}: test classes {unknown} have no training images")
    train_x, train_y = _decode(entries["train"], classes)
    test_x, test_y = _decode(entries["test"], classes)
    if train_x.shape[1:] != test_x.shape[1:]:
        train_x, test_x = _common_channels(train_x), _common_channels(test_x)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{path}: train images are {tuple(train_x.shape[2:])}, test images "
                        f"{tuple(test_x.shape[2:])}; all images must have one size")
    return RawImages(classes, train_x, train_y, test_x, test_y)


def _archive_stem(path: Path) -> str:
    """`cifar10-jpeg.tar.gz` -> `cifar10-jpeg`; a folder keeps its name."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield (relative posix name, reader of its bytes) for every file in a folder or archive."""
    name = path.name.lower()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield file.relative_to(path).as_posix(), file.read_bytes
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name, tar.extractfile(member).read  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path} is not a readable tar archive ({exc})") from None
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield info.filename, lambda info=info: zf.read(info)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path} is not a readable zip archive ({exc})") from None
    else:
        raise DataError(f"{path} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")


def _decode(entries: list[tuple[str, str, bytes]], classes: tuple[str, ...]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode images in (class, name) order, so archive order never changes the result."""
    index = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    arrays = []
    for _, name, data in entries:
        try:
            with Image.open(io.BytesIO(data)) as img:
                grey = img.mode in ("1", "L", "I", "I;16", "F")
                arrays.append(np.asarray(img.convert("L" if grey else "RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {name}: {exc}") from None
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[:2]
        odd = next(n for (_, n, _), a in zip(entries, arrays) if a.shape[:2] != first)
        raise DataError(f"all images must have one size: {entries[0][1]} is {first}, {odd} is not")
    colour = any(a.ndim == 3 for a in arrays)
    if colour:
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    else:
        x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    y = torch.tensor([index[label] for label, _, _ in entries], dtype=torch.int64)
    return x.contiguous(), y


def _common_channels(x: torch.Tensor) -> torch.Tensor:
    """Grey splits become 3-channel when the other split is colour."""
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
