"""Typed configuration built from params.yaml; every parameter check happens here, before any work.

Each top-level section of params.yaml is a frozen dataclass. `load_config` rejects unknown keys,
missing keys, wrong types, values outside a `Literal` choice and values outside the numeric bounds
declared with `bounded(...)`, always naming the key, the value and what is allowed. params.yaml is
the single source of the defaults: the dataclasses declare types and limits, not values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from xai.errors import ConfigError


def bounded(*, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with numeric bounds, checked when the config is built."""
    return field(metadata={"ge": ge, "gt": gt, "le": le, "lt": lt})


SEED_MAX = 2**31 - 1  # seeds feed generators seeded with seed + offsets; keep them in int64 range
TAU_MIN = 1e-3  # below this the relaxed masks' softmax underflows to exact one-hots (no gradient)

_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records runs; `uri: null` means sqlite `mlflow.db` at the project root."""

    enabled: bool
    uri: str | None
    experiment: str
    timeout_s: float = bounded(gt=0)


@dataclass(frozen=True)
class DataConfig:
    """The image data set and its train/validation split."""

    dataset: Literal["mnist", "fashion_mnist", "cifar10", "folder"]
    root: str
    folder: str | None
    download: bool
    val_fraction: float = bounded(gt=0, lt=1)
    split_seed: int = bounded(ge=0, le=SEED_MAX)

    def __post_init__(self) -> None:
        if self.dataset == "folder" and not self.folder:
            raise ConfigError(
                "data.folder is required when data.dataset = 'folder': name a class-per-folder "
                "tree with train/ and test/ inside, or a .tar.gz/.tgz/.tar/.zip of one "
                "(relative to data.root, or absolute)"
            )


@dataclass(frozen=True)
class ToyConfig:
    """The 2-D toy set; `noise: null` takes the reference value of the chosen set."""

    dataset: Literal["moons", "circles", "blobs"]
    n_samples: int = bounded(ge=10)
    noise: float | None = bounded(ge=0)
    seed: int = bounded(ge=0, le=SEED_MAX)
    test_fraction: float = bounded(gt=0, lt=1)
    split_seed: int = bounded(ge=0, le=SEED_MAX)
    circles_factor: float = bounded(gt=0, lt=1)


@dataclass(frozen=True)
class BlackboxConfig:
    """The black-box classifier and how it is trained."""

    arch: Literal["auto", "small_cnn", "resnet"]
    width: int = bounded(ge=1)
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: float = bounded(gt=0)
    weight_decay: float = bounded(ge=0)
    momentum: float = bounded(ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant"]
    epochs: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    augment: Literal["auto", "none", "crop", "crop_flip"]
    crop_padding: int = bounded(ge=0)
    label_smoothing: float = bounded(ge=0, lt=1)
    precision: Literal["auto", "fp32", "bf16"]
    eval_batch_size: int = bounded(ge=1)


@dataclass(frozen=True)
class VibiConfig:
    """VIBI (and L2X, its beta = 0 entry): explainer, approximator, sampler and training."""

    objective: Literal["published", "blackbox", "realx"]
    explainer_type: Literal["Unet", "ResNet_2x", "ResNet_4x", "ResNet_8x"]
    xpl_channels: Literal[1, 3]
    width: float = bounded(gt=0)
    k: int = bounded(ge=1)
    beta: float = bounded(ge=0)
    num_samples: int = bounded(ge=1)
    straight_through: bool
    epochs: int = bounded(ge=1)
    l2x_epochs: int = bounded(ge=1)
    evals_per_epoch: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    lr: float = bounded(gt=0)
    warmup_steps: int = bounded(ge=0)
    tau_start: float = bounded(ge=TAU_MIN, le=100)
    tau_end: float = bounded(ge=TAU_MIN, le=100)
    precision: Literal["auto", "fp32", "bf16"]
    save_best: bool
    resume: bool
    jump_start: bool

    def __post_init__(self) -> None:
        if self.tau_end > self.tau_start:
            raise ConfigError(
                f"vibi.tau_end = {self.tau_end} is above vibi.tau_start = {self.tau_start}; "
                "the temperature anneals downwards"
            )


@dataclass(frozen=True)
class JudgeConfig:
    """The neutral judge: a surrogate of the black box trained on random chunk subsets."""

    epochs: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    lr: float = bounded(gt=0)
    imputed_fraction: float = bounded(ge=0, le=1)
    start_from_blackbox: bool


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation: one seeded test subset, the pixel budgets and the measures' knobs."""

    num_images: int = bounded(ge=1)
    seed: int = bounded(ge=0, le=SEED_MAX)
    budgets: tuple[int, ...] = bounded(ge=1)
    curve_points: int = bounded(ge=2)
    ig_steps: int = bounded(ge=2)
    smoothgrad_samples: int = bounded(ge=1)
    smoothgrad_std: float = bounded(gt=0)
    shap_samples: int = bounded(ge=1)
    lime_samples: int = bounded(ge=2)
    robustness_images: int = bounded(ge=2)
    perturbations: int = bounded(ge=1)
    sensitivity_radius: float = bounded(gt=0)
    noise_std: float = bounded(gt=0)
    encoding_folds: int = bounded(ge=2)
    bootstrap: int = bounded(ge=10)
    batch_size: int = bounded(ge=1)

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ConfigError("evaluate.budgets = [] is empty; list at least one number of chunks")
        if self.robustness_images > self.num_images:
            raise ConfigError(
                f"evaluate.robustness_images = {self.robustness_images} is out of range; "
                f"allowed: <= evaluate.num_images ({self.num_images})")


@dataclass(frozen=True)
class InvertibleToyConfig:
    """The toy invertible classifier and its training (defaults: the reference setup)."""

    blocks: int = bounded(ge=1)
    hidden: int = bounded(ge=1)
    lr: float = bounded(gt=0)
    momentum: float = bounded(ge=0, lt=1)
    epochs: int = bounded(ge=1)
    milestones: tuple[int, ...] = bounded(ge=1)
    gamma: float = bounded(gt=0, le=1)
    batch_size: int = bounded(ge=1)
    restarts: int = bounded(ge=1)

    def __post_init__(self) -> None:
        _check_milestones(self.milestones, self.epochs, "invertible.toy")


@dataclass(frozen=True)
class InvertibleImageConfig:
    """The image invertible classifier: one entry per stage in each list, and its training."""

    downsample: tuple[int, ...] = bounded(ge=2)
    blocks: tuple[int, ...] = bounded(ge=0)
    hidden: tuple[int, ...] = bounded(ge=1)
    kernel: tuple[int, ...] = bounded(ge=1)
    split: tuple[bool, ...]
    means: Literal["fixed", "learned"]
    epochs: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    lr: float = bounded(gt=0)
    warmup: float = bounded(ge=0, lt=1)
    separation: float = bounded(gt=0)
    nll_weight: float = bounded(ge=0)
    clip: float = bounded(gt=0)
    eval_batch_size: int = bounded(ge=1)
    threads: int = bounded(ge=0)

    def __post_init__(self) -> None:
        stages = len(self.downsample)
        if stages == 0:
            raise ConfigError("invertible.image.downsample must name at least one stage")
        for name in ("blocks", "hidden", "kernel", "split"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(
                    f"invertible.image.{name} = {list(getattr(self, name))} needs one entry per "
                    f"stage, like invertible.image.downsample = {list(self.downsample)}"
                )
        if any(k % 2 == 0 for k in self.kernel):
            raise ConfigError(
                f"invertible.image.kernel = {list(self.kernel)} is not allowed; kernels must be "
                "odd (1, 3, 5, ...) so that a subnet keeps the feature map's size"
            )


@dataclass(frozen=True)
class InvertibleCounterfactualConfig:
    """Stage `evaluate_counterfactuals`: counterfactuals of the image invertible classifier."""

    margin: float = bounded(ge=0)
    posthoc_k: int = bounded(ge=1)
    posthoc_chunk: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)


@dataclass(frozen=True)
class InvertibleConfig:
    """Stages `train_invertible_toy`, `train_invertible` and `evaluate_counterfactuals`."""

    toy: InvertibleToyConfig
    image: InvertibleImageConfig
    counterfactual: InvertibleCounterfactualConfig


def _check_milestones(milestones: tuple[int, ...], epochs: int, key: str) -> None:
    if list(milestones) != sorted(set(milestones)) or any(m > epochs for m in milestones):
        raise ConfigError(
            f"{key}.milestones = {list(milestones)} is not allowed; use increasing epochs "
            f"<= {key}.epochs = {epochs}"
        )


@dataclass(frozen=True)
class RenderConfig:
    """The figures: which test items they show and how they are drawn."""

    dpi: int = bounded(ge=30, le=600)
    seed: int = bounded(ge=0, le=SEED_MAX)
    toy_points: int = bounded(ge=1)
    vibi_images: int = bounded(ge=1)
    vibi_columns: int = bounded(ge=1)
    counterfactual_images: int = bounded(ge=1)
    counterfactual_target: int | None = bounded(ge=0)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

#: Image shapes of the torchvision data sets, known before any data is read (for `folder` data
#: the same checks run once the prepared images are loaded).
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class Config:
    """All of params.yaml."""

    seed: int = bounded(ge=0, le=SEED_MAX)
    device: str
    road_noise_std: float = bounded(ge=0)
    tracking: TrackingConfig
    data: DataConfig
    toy: ToyConfig
    blackbox: BlackboxConfig
    invertible: InvertibleConfig
    vibi: VibiConfig
    judge: JudgeConfig
    render: RenderConfig
    evaluate: EvaluateConfig

    def __post_init__(self) -> None:
        if not _DEVICE.match(self.device):
            raise ConfigError(
                f"device = {self.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps"
            )
        shape = IMAGE_SHAPES.get(self.data.dataset)
        if shape is not None:
            self._check_chunks(shape)

    def _check_chunks(self, shape: tuple[int, int, int]) -> None:
        """`vibi.k` and `evaluate.budgets` against the explainer's chunks of these images."""
        from xai.models.explainers import check_fits, evaluation_budgets

        v = self.vibi
        chunks = check_fits(v.explainer_type, v.xpl_channels, v.k, shape, self.data.dataset)
        evaluation_budgets(self.evaluate.budgets, v.k, chunks // v.xpl_channels)


# ----------------------------------------------------------------------------- building


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read, merge `overrides` (dotted keys, e.g. {"vibi.k": 8}) and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return build(Config, raw)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for `dotted = "a.b.c"`, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a mapping")
    node[leaf] = value


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys, types and bounds recursively."""
    where = prefix or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {_join(prefix, str(unknown[0]))!r} in {where}; "
            f"allowed keys: {', '.join(fields)}"
        )
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"missing key {_join(prefix, missing[0])!r} in {where}")
    hints = get_type_hints(cls)
    values = {
        name: _coerce(raw[name], hints[name], _join(prefix, name), f.metadata)
        for name, f in fields.items()
    }
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(value: Any, hint: Any, key: str, bounds: Any) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key, bounds)
    if origin is Literal:
        choices = get_args(hint)
        if not any(c == value and type(c) is type(value) for c in choices):  # 1.0 is not 1
            raise ConfigError(
                f"{key} = {value!r} is not allowed; choose one of: "
                + ", ".join(str(c) for c in choices)
            )
        return value
    if origin in (tuple, list):
        (inner, *_rest) = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected a list")
        return tuple(_coerce(v, inner, f"{key}[{i}]", bounds) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected an integer")
        return _check_bounds(value, key, bounds)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected a finite number")
        return float(_check_bounds(value, key, bounds))  # messages show the value as written
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected a non-empty string")
        return value
    raise TypeError(f"config field {key}: unsupported type {hint!r}")  # a bug in this module


def _check_bounds(value: float, key: str, bounds: Any) -> float:
    for name, bound in (bounds or {}).items():
        if bound is not None and not _BOUND_OK[name](value, bound):
            limits = " and ".join(
                f"{_BOUND_TEXT[n]} {int(b) if float(b).is_integer() else f'{b:g}'}"
                for n, b in bounds.items() if b is not None
            )
            raise ConfigError(f"{key} = {value!r} is out of range; allowed: {limits}")
    return value


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config dataclass (or mapping) into dotted keys, e.g. for logging params."""
    items = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    out: dict[str, Any] = {}
    for name, value in items.items():
        key = _join(prefix, name)
        if isinstance(value, dict):
            out.update(flatten(value, key))
        else:
            out[key] = value
    return out
