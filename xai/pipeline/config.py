"""Typed configuration built from params.yaml; every parameter check happens here, before any work.

Each section of params.yaml is a frozen dataclass: the library's own settings classes (e.g.
`xai.train.vibi.VibiConfig`, with the library defaults and limits beside the code that reads
them) and the pipeline's sections defined here. `load_config` rejects unknown keys, missing keys,
wrong types, values outside a `Literal` choice and values outside the numeric bounds declared with
`bounded(...)`, always naming the key, the value and what is allowed. params.yaml lists every
value, overriding the library defaults: DVC sees a change only in what params.yaml holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from xai.data.sources import DataConfig
from xai.data.toy import ToyConfig
from xai.errors import ConfigError, XaiError
from xai.evaluation.counterfactuals import InvertibleCounterfactualConfig
from xai.evaluation.table import MeasureConfig
from xai.models.blackbox import BlackboxConfig
from xai.models.explainers import check_fits, evaluation_budgets
from xai.settings import SEED_MAX, bounded
from xai.train.invertible import InvertibleImageConfig, InvertibleToyConfig
from xai.train.judge import JudgeConfig
from xai.train.measurement import MeasurementConfig
from xai.train.vibi import VibiConfig

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


#: Training images GradientShap integrates from in the evaluation.
SHAP_BASELINES = 16


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(MeasureConfig):
    """The evaluation: one seeded test subset, the methods' knobs, and how the library measures
    (`MeasureConfig`'s fields, except those the pipeline derives from other sections)."""

    #: `MeasureConfig` fields that are not keys of `evaluate`: vibi.k, the explainer's chunk size
    #: and the top-level road_noise_std.
    derived: ClassVar[tuple[str, ...]] = ("k", "chunk", "road_noise_std")

    num_images: int = bounded(ge=1)
    ig_steps: int = bounded(ge=2)
    smoothgrad_samples: int = bounded(ge=1)
    smoothgrad_std: float = bounded(gt=0)
    shap_samples: int = bounded(ge=1)
    lime_samples: int = bounded(ge=2)
    occlusion_window: int = bounded(1, ge=1)  # occlusion's square, in chunks ...
    occlusion_stride: int = bounded(1, ge=1)  # ... and its step (at most the window)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # of the explained models' passes

    def measures(self, budgets: tuple[int, ...], k: int, chunk: int, road_noise_std: float
                 ) -> MeasureConfig:
        """How `xai.evaluate` measures under these params, at `budgets` and the explainer's `k`
        chunks of `chunk` pixels (what stage `evaluate` uses)."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(MeasureConfig)}
        return MeasureConfig(**(given | {"budgets": tuple(budgets), "k": k, "chunk": chunk,
                                         "road_noise_std": road_noise_std}))

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ConfigError("evaluate.budgets = [] is empty; list at least one number of chunks")
        if self.occlusion_stride > self.occlusion_window:
            raise ConfigError(
                f"evaluate.occlusion_stride = {self.occlusion_stride} is out of range; allowed: "
                f"<= evaluate.occlusion_window ({self.occlusion_window}), or some chunks are "
                "never occluded")
        if self.robustness_images > self.num_images:
            raise ConfigError(
                f"evaluate.robustness_images = {self.robustness_images} is out of range; "
                f"allowed: <= evaluate.num_images ({self.num_images})")


@dataclass(frozen=True)
class InvertibleConfig:
    """Stages `train_invertible_toy`, `train_invertible` and `evaluate_counterfactuals`."""

    toy: InvertibleToyConfig
    image: InvertibleImageConfig
    counterfactual: InvertibleCounterfactualConfig


@dataclass(frozen=True)
class VibiParams(VibiConfig):
    """The `vibi` section: the library's `VibiConfig` and what only the stages `train_l2x` and
    `train_vibi` read (`library` is the former alone, what training gets)."""

    grid_images: int = bounded(4, ge=0)  # validation images in the grid logged to MLflow; 0: none

    @property
    def library(self) -> VibiConfig:
        """These settings without the stages' own keys."""
        fields = dataclasses.fields(VibiConfig)
        return VibiConfig(**{f.name: getattr(self, f.name) for f in fields})


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


@dataclass(frozen=True)
class PresetConfig:
    """What params.yaml was composed from (`conf/data/`, `conf/recipe/`): names for the runs
    table and the messages, and the image shapes whose mismatch refuses a recipe for the data."""

    data: str | None
    images: tuple[int, ...] | None = bounded(None, ge=1)  # a folder's C, H, W; None: once read
    recipe: str | None = None
    recipe_images: tuple[int, ...] | None = bounded(None, ge=1)  # what the recipe is made for

    def __post_init__(self) -> None:
        for key in ("images", "recipe_images"):
            shape = getattr(self, key)
            if shape is not None and len(shape) != 3:
                raise ConfigError(f"preset.{key} = {list(shape)} is not allowed; use null or "
                                  "[channels, height, width]")

    def names(self) -> str:
        """The composition as `dvc exp run -S` names it (empty for a hand-made params.yaml)."""
        return " ".join(f"{group}={name}" for group, name in
                        (("data", self.data), ("recipe", self.recipe)) if name)


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


@dataclass(frozen=True)
class ServingConfig:
    """The explainer as an MLflow Model (`xai.pipeline.serving`): the registered model the
    `train_vibi` stage adds a version to, and what the logged model accepts. Like `tracking`,
    MLflow's business: no stage re-runs when these change."""

    registered_model: str
    max_batch: int = bounded(ge=1)  # images per request; a larger batch gets a 400
    threads: int = bounded(ge=1)    # torch threads per request of the served model

    def __post_init__(self) -> None:
        if not _REGISTERED_NAME.match(self.registered_model):
            raise ConfigError(f"serving.registered_model = {self.registered_model!r} is not "
                              "allowed; use letters, digits, '.', '_' and '-' (it goes into "
                              "models:/<name>@champion)")


_REGISTERED_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")

#: The params.yaml keys of the explainer-chunk checks' settings (`check_fits`, `evaluation_budgets`).
CHUNK_KEYS = {"k": "vibi.k", "xpl_channels": "vibi.xpl_channels", "budgets": "evaluate.budgets"}

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

#: Image shapes of the torchvision data sets, known before any data is read (for `folder` data
#: the same checks run once the prepared images are loaded).
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class Config:
    """All of params.yaml."""

    preset: PresetConfig
    seed: int = bounded(ge=0, le=SEED_MAX)
    device: str
    road_noise_std: float = bounded(ge=0)
    tracking: TrackingConfig
    data: DataConfig
    toy: ToyConfig
    blackbox: BlackboxConfig
    invertible: InvertibleConfig
    measurement: MeasurementConfig
    vibi: VibiParams
    judge: JudgeConfig
    render: RenderConfig
    evaluate: EvaluateConfig
    serving: ServingConfig

    def __post_init__(self) -> None:
        if not _DEVICE.match(self.device):
            raise ConfigError(
                f"device = {self.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps"
            )
        shape = IMAGE_SHAPES.get(self.data.dataset)
        if shape is None and self.preset.images is not None:  # a folder whose preset knows them
            shape = tuple(self.preset.images)
        if shape is not None:  # else `prepare` checks the recipe and training the chunks
            self.check_recipe(shape)
            self._check_chunks(shape)

    def check_recipe(self, shape: tuple[int, ...]) -> None:
        """Refuse a recipe made for images other than `shape`'s, naming the recipe and the data;
        for a folder of images, `prepare` runs this once it has read them."""
        made_for = self.preset.recipe_images
        if made_for is not None and tuple(made_for) != tuple(shape):
            p = self.preset
            data = (f"data={p.data} " if p.data else "") + f"(data.dataset = {self.data.dataset})"
            raise ConfigError(
                f"recipe={p.recipe} is made for {_shape(made_for)} images and {data} has "
                f"{_shape(shape)} images: choose a recipe for these images (one whose "
                "preset.recipe_images is null runs on any) or other data")

    def _check_chunks(self, shape: tuple[int, ...]) -> None:
        """`vibi.k` and `evaluate.budgets` against the explainer's chunks of these images."""
        v = self.vibi
        try:
            chunks = check_fits(v.explainer_type, v.xpl_channels, v.k, shape, self.data.dataset)
            evaluation_budgets(self.evaluate.budgets, v.k, chunks // v.xpl_channels)
        except ConfigError as exc:
            refused = exc.qualified("", CHUNK_KEYS)
            if self.preset.names():
                refused = ConfigError(f"{refused} (composed from {self.preset.names()})")
            raise refused from None


# ----------------------------------------------------------------------------- building


def param_error(exc: XaiError) -> XaiError:
    """`exc` with the settings it names written as params.yaml keys, when its owner is a section."""
    path = _section_path(Config, exc.owner) if exc.owner is not None else None
    return exc.qualified(path) if path else exc


def _section_path(cls: type, owner: type, prefix: str = "") -> str | None:
    for f in dataclasses.fields(cls):
        hint = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            key = _join(prefix, f.name)
            found = key if _extends(hint, owner) else _section_path(hint, owner, key)
            if found:
                return found
    return None


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
    return parse_section(Config, raw)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for `dotted = "a.b.c"`, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a mapping")
    node[leaf] = value


def parse_section(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys, types and bounds recursively."""
    where = prefix or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _derived(cls)}
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
    try:
        return cls(**values)
    except ConfigError as exc:
        if exc.owner is None or not _extends(cls, exc.owner):
            raise
        raise exc.qualified(prefix) from None


def _extends(section: type, owner: type) -> bool:
    """Whether params.yaml section `section` holds the fields of settings class `owner` under
    their own names: it is `owner`, or adds the stages' own keys to it (`VibiParams`)."""
    return section is owner or (owner in section.__bases__ and not _derived(section))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(value: Any, hint: Any, key: str, bounds: Any) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        inner, *others = [o for o in options if o is not type(None)]
        if others:  # e.g. int | tuple[int, ...]: a list takes the sequence type
            sequences = [o for o in (inner, *others) if get_origin(o) in (tuple, list)]
            scalars = [o for o in (inner, *others) if get_origin(o) not in (tuple, list)]
            inner = sequences[0] if isinstance(value, (list, tuple)) and sequences else scalars[0]
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


def _derived(cls: type) -> tuple[str, ...]:
    """Fields of a section that are not its keys (`EvaluateConfig.derived`)."""
    return getattr(cls, "derived", ())


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config dataclass (or mapping) into dotted keys, e.g. for logging params."""
    if dataclasses.is_dataclass(section):
        items = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                 if f.name not in _derived(type(section))}
        items = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                 for k, v in items.items()}
    else:
        items = dict(section)
    out: dict[str, Any] = {}
    for name, value in items.items():
        key = _join(prefix, name)
        if isinstance(value, dict):
            out.update(flatten(value, key))
        else:
            out[key] = value
    return out
