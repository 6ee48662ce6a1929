"""Raw image sources: torchvision's MNIST / Fashion-MNIST / CIFAR-10, or a class-per-folder tree.

Each source returns whole splits as uint8 tensors (N x C x H x W) plus class names. torchvision's
own dataset classes read their on-disk layout under `data.root` and download when the files are
missing and `data.download` is on; a class-per-folder tree (`train/<class>/*`, `test/<class>/*`)
may also be a .tar.gz/.tgz/.tar/.zip archive, read without extracting it.

In a folder tree, grey, palette and RGBA images are converted to the set's channels (grey when
every image is grey, else RGB; alpha is dropped), files that are not images by their suffix are
skipped (and counted), and images of another size are resized to `data.image_size` when it is
set. A file that does not decode, images of mixed sizes without `data.image_size`, and an empty
class folder stop `prepare` with a message naming the file or folder.
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
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from xai.data.prepared import Dataset, Split, train_val_split
from xai.errors import ConfigError, DataError
from xai.io import file_md5
from xai.settings import SEED_MAX, bounded


@dataclass(frozen=True)
class DataConfig:
    """The image data set and its train/validation split."""

    dataset: Literal["mnist", "fashion_mnist", "cifar10", "folder"] = 'mnist'
    root: str = 'data/raw'
    folder: str | None = None
    download: bool = True
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    split_seed: int = bounded(0, ge=0, le=SEED_MAX)
    image_size: int | tuple[int, ...] | None = bounded(None, ge=2, le=4096)
    train_images: int | None = bounded(None, ge=2)  # a seeded random subset of the training images
    test_images: int | None = bounded(None, ge=1)  # ... and of the test images (None: all)

    def __post_init__(self) -> None:
        if self.dataset == "folder" and not self.folder:
            raise ConfigError(
                "`folder` is required when `dataset` = 'folder': name a class-per-folder "
                "tree with train/ and test/ inside, or a .tar.gz/.tgz/.tar/.zip of one "
                "(relative to `root`, or absolute)", owner=DataConfig,
                fields=("folder", "dataset", "root"))
        size = self.image_size
        if isinstance(size, tuple) and len(size) != 2:
            raise ConfigError(f"`image_size` = {list(size)} is not allowed; use null (keep the "
                              "images' size), a side length N or [height, width]",
                              owner=DataConfig, fields=("image_size",))
        if size is not None and self.dataset != "folder":
            shown = list(size) if isinstance(size, tuple) else size
            raise ConfigError(f"`image_size` = {shown} is not allowed with `dataset` = "
                              f"{self.dataset!r} (its images have one size); allowed: null, or "
                              "a size with `dataset` = 'folder'", owner=DataConfig,
                              fields=("image_size", "dataset"))

    @property
    def size(self) -> tuple[int, int] | None:
        """`image_size` as (height, width), or None to keep the images' own size."""
        size = self.image_size
        return None if size is None else (size, size) if isinstance(size, int) else \
            (size[0], size[1])

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
        raw = read_folder(folder if folder.is_absolute() else root / folder, cfg.size)
        name = _archive_stem(folder)
    else:
        raw, name = read_torchvision(cfg.dataset, root, cfg.download), cfg.dataset
    train_x, train_y = _subset(raw.train_x, raw.train_y, cfg.train_images, cfg.split_seed)
    test_x, test_y = _subset(raw.test_x, raw.test_y, cfg.test_images, cfg.split_seed + 1)
    try:
        train, val = train_val_split(train_x, train_y, cfg.val_fraction, cfg.split_seed)
    except DataError as exc:
        raise DataError(str(exc), owner=DataConfig, fields=exc.fields) from None
    return Dataset(name, raw.classes, train, val, Split(test_x, test_y))


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random `n` of the images, in their original order (all of them for None or an
    `n` at least their number)."""
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[keep], y[keep]


def raw_files(cfg: DataConfig, root: Path) -> dict[str, Path]:
    """The raw files `load_images` reads, by a name that does not depend on where they are."""
    if cfg.dataset != "folder":
        spec = TORCHVISION_SETS[cfg.dataset]
        return {f"{spec.folder}/{f}": root / spec.folder / f for f in spec.files}
    folder = Path(cfg.folder)  # type: ignore[arg-type]  # required by DataConfig
    path = folder if folder.is_absolute() else root / folder
    if path.is_dir():
        return {f"{path.name}/{p.relative_to(path).as_posix()}": p
                for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: path}


def raw_fingerprint(cfg: DataConfig, root: Path) -> dict[str, object]:
    """md5 of every raw file `prepare` reads (None where one is missing, e.g. before a download).

    Equal raw data gives an equal fingerprint wherever it lies and whatever its timestamps, so a
    fresh copy of the same data set invalidates nothing.
    """
    files = raw_files(cfg, root)
    return {"dataset": cfg.dataset,
            "files": {name: file_md5(p) if p.is_file() else None for name, p in files.items()}}


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
            raise DataError(_missing_message(spec, root, "`download` is false"), owner=DataConfig,
                            fields=("download", "root")) from None
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
        raise DataError(_missing_message(spec, root, f"the download failed: {reason}"),
                        owner=DataConfig, fields=("root",)) from None
    finally:
        socket.setdefaulttimeout(previous)


def _missing_message(spec: _TorchvisionSet, root: Path, why: str) -> str:
    return (
        f"{spec.title} not found under {root} ({why}).\n"
        f"  expected torchvision's layout: {spec.layout(root)}\n"
        f"  copy the files there, or point `root` at a folder that holds {spec.folder}/"
    )


def _tensors(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data  # type: ignore[attr-defined]
    x = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # N x C x H x W
    y = torch.as_tensor(ds.targets, dtype=torch.int64)  # type: ignore[attr-defined]
    return x.to(torch.uint8).contiguous(), y


# ----------------------------------------------------------------------------- folder tree


def read_folder(path: Path, size: tuple[int, int] | None = None) -> RawImages:
    """Read a class-per-folder tree with train/ and test/ inside (a folder or an archive);
    `size` (height, width) resizes every image to it, None keeps their (one) size."""
    if not path.exists():
        raise DataError(
            f"image folder {path} not found; expected a folder (or {'/'.join(ARCHIVE_SUFFIXES)} "
            "archive) holding train/<class>/<image> and test/<class>/<image> "
            "(set `folder`, relative to `root` or absolute)", owner=DataConfig,
            fields=("folder", "root"))
    entries: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    prefixes: set[PurePosixPath] = set()
    class_folders: dict[tuple[str, str], str] = {}  # (split, class) -> its path in the tree
    skipped: list[str] = []
    for name, read in tqdm(_members(path), desc=f"reading {path.name}", unit="img",
                           mininterval=1.0):
        parts = PurePosixPath(name)
        if read is None:  # a folder: train/<class> may turn out to hold no image
            if len(parts.parts) >= 2 and parts.parts[-2] in entries:
                class_folders[(parts.parts[-2], parts.parts[-1])] = name
            continue
        if len(parts.parts) < 3 or parts.parts[-3] not in entries:
            continue
        split, label = parts.parts[-3], parts.parts[-2]
        class_folders[(split, label)] = str(parts.parent)
        if parts.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(name)
            continue
        prefixes.add(parts.parent.parent.parent)
        entries[split].append((label, name, read()))
    if skipped:
        print(f"{path.name}: skipped {len(skipped)} files that are not images by their suffix "
              f"(e.g. {skipped[0]}); images end in {', '.join(sorted(IMAGE_SUFFIXES))}")
    filled = {(split, label) for split, items in entries.items() for label, _, _ in items}
    empty = sorted(set(class_folders) - filled)
    if empty and entries["train"] and entries["test"]:
        raise DataError(f"{path}: class folder {class_folders[empty[0]]} holds no images; add "
                        "images or remove the folder")
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
    train_x, train_y = _decode(entries["train"], classes, size)
    test_x, test_y = _decode(entries["test"], classes, size)
    if train_x.shape[1:] != test_x.shape[1:]:
        train_x, test_x = _common_channels(train_x), _common_channels(test_x)
    if train_x.shape[1:] != test_x.shape[1:]:
        h, w = train_x.shape[2:]
        raise DataError(f"{path}: train images are {(h, w)}, test images "
                        f"{tuple(test_x.shape[2:])}; all images must have one size: set "
                        f"`image_size` (e.g. [{h}, {w}]) to resize them", owner=DataConfig,
                        fields=("image_size",))
    return RawImages(classes, train_x, train_y, test_x, test_y)


def _archive_stem(path: Path) -> str:
    """`cifar10-jpeg.tar.gz` -> `cifar10-jpeg`; a folder keeps its name."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _members(path: Path) -> Iterator[tuple[str, Callable[[], bytes] | None]]:
    """Yield (relative posix name, reader of its bytes) for every file in a folder or archive,
    and (name, None) for every folder in it."""
    name = path.name.lower()
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path).as_posix()
            if file.is_dir():
                yield rel, None
            elif file.is_file():
                yield rel, file.read_bytes
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name, tar.extractfile(member).read  # type: ignore[union-attr]
                    elif member.isdir():
                        yield member.name, None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path} is not a readable tar archive ({exc})") from None
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        yield info.filename.rstrip("/"), None
                    else:
                        yield info.filename, lambda info=info: zf.read(info)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path} is not a readable zip archive ({exc})") from None
    else:
        raise DataError(f"{path} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")


def _decode(entries: list[tuple[str, str, bytes]], classes: tuple[str, ...],
            size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode images in (class, name) order, so archive order never changes the result;
    `size` (height, width) resizes them (bilinear, with Pillow's antialiasing)."""
    index = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    arrays = []
    for _, name, data in entries:
        try:
            with Image.open(io.BytesIO(data)) as img:
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
                img = img.convert("L" if grey else "RGB")  # alpha dropped
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(img))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot decode image {name}: {exc}") from None
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[:2]
        odd, shape = next((n, a.shape[:2]) for (_, n, _), a in zip(entries, arrays)
                          if a.shape[:2] != first)
        raise DataError(f"all images must have one size: {entries[0][1]} is {first}, {odd} is "
                        f"{shape}; set `image_size` (e.g. {list(first)}) to resize them",
                        owner=DataConfig, fields=("image_size",))
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
