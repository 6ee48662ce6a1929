"""VIBI for your own model, from a notebook: `VIBI(blackbox).fit(x_train).attribute(x)`.

The pipeline's stages train VIBI from params.yaml; this is the same training with library defaults
(the pipeline's MNIST defaults) and nothing of DVC, MLflow or params.yaml. The black box is any
`nn.Module` or callable mapping images (N x C x H x W, floats in [0, 1]) to class logits; `fit`
queries it for the probabilities it explains.

    >>> import torch, xai
    >>> blackbox = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    >>> x = torch.rand(256, 1, 8, 8)
    >>> vibi = xai.VIBI(blackbox, k=1, width_multiplier=0.25).fit(x, epochs=1, show_progress=False)
    >>> vibi.attribute(x[:3]).shape
    torch.Size([3, 1, 8, 8])
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from xai.data.prepared import Split
from xai.devices import CONV_LAYOUT
from xai.errors import DataError
from xai.explain.attribution import ExplainerDistribution
from xai.io import load_torch, write_bytes
from xai.models.explainers import check_fits
from xai.models.vibi import (
    KIND,
    ExplainedPrediction,
    VibiModel,
    VibiSpec,
    save_vibi,
    vibi_from_state,
)
from xai.train.loop import History
from xai.train.vibi import VibiConfig, train

Model = Callable[[torch.Tensor], torch.Tensor]
_DEFAULTS = VibiConfig()
#: What `VIBI.save` wrote before it wrote the pipeline's format (still loads).
OLDER_KIND = "xai.api.vibi"
#: The file suffix of each format `export` writes.
EXPORT_SUFFIX = {"export": ".pt2", "torchscript": ".pt"}


class _Callable(nn.Module):
    """A plain callable as a module, so the training code can freeze and call it."""

    def __init__(self, fn: Model) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class VIBI:
    """An explainer that keeps the `k` chunks of an image from which the black box still makes its
    prediction (Bang et al., 2021), trained by default against the black box itself (objective
    `blackbox`; `published` trains the paper's approximator instead: see the README's VIBI section).
    `fill="smooth"` shows the predictor the removed pixels interpolated from the kept ones rather
    than 0 (`xai.data.imputation.smooth_fill`; docs/vibi.md).

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> blackbox = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    >>> x = torch.rand(64, 1, 8, 8)  # four 4 x 4 chunks per image (the ResNet_4x explainer)
    >>> vibi = xai.VIBI(blackbox, k=1, width_multiplier=0.25).fit(x, epochs=1, show_progress=False)
    >>> maps = vibi.attribute(x[:3])  # p(chunk | x), spread over each chunk's pixels
    >>> maps.shape, torch.allclose(maps.sum(dim=(1, 2, 3)), torch.ones(3))
    (torch.Size([3, 1, 8, 8]), True)
    >>> vibi.top_k(x[:3]).sum(dim=(1, 2, 3)).tolist()  # the k = 1 chunk kept: 16 pixels
    [16, 16, 16]
    """

    def __init__(self, blackbox: Model, *, k: int = _DEFAULTS.k, beta: float = _DEFAULTS.beta,
                 explainer: str = _DEFAULTS.explainer_type,
                 xpl_channels: int = _DEFAULTS.xpl_channels,
                 width_multiplier: float = _DEFAULTS.width_multiplier,
                 objective: str = _DEFAULTS.objective, num_samples: int = _DEFAULTS.num_samples,
                 lr: float = _DEFAULTS.lr, batch_size: int = _DEFAULTS.batch_size,
                 tau: tuple[float, float] = (_DEFAULTS.tau_start, _DEFAULTS.tau_end),
                 warmup_steps: int = _DEFAULTS.warmup_steps, fill: str = _DEFAULTS.fill,
                 seed: int = 0, device: torch.device | str | None = None) -> None:
        self.blackbox = blackbox if isinstance(blackbox, nn.Module) else _Callable(blackbox)
        self.device = torch.device(device) if device is not None else next(
            (p.device for p in self.blackbox.parameters()), torch.device("cpu"))
        # the library defaults (`VibiConfig`), fp32, one validation per epoch, no checkpoint
        self.settings = asdict(replace(
            _DEFAULTS, objective=objective, explainer_type=explainer, xpl_channels=xpl_channels,
            width_multiplier=width_multiplier, k=k, beta=beta, num_samples=num_samples, evals_per_epoch=1,
            batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, tau_start=tau[0],
            tau_end=tau[1], fill=fill, precision="fp32", resume=False))
        self.seed = seed
        self.model: VibiModel | None = None

    @torch.inference_mode()
    def _probabilities(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        self.blackbox.eval()
        return torch.cat([self.blackbox(x[i:i + batch_size].to(self.device)).float().softmax(1)
                          for i in range(0, len(x), batch_size)])

    def fit(self, x_train: torch.Tensor, x_val: torch.Tensor | None = None, *, epochs: int = 2,
            show_progress: bool = True) -> VIBI:
        """Train on images `x_train` (N x C x H x W, floats in [0, 1] or uint8); `x_val` (default:
        the last tenth of `x_train`) picks the best evaluation. Returns self."""
        if x_train.dim() != 4:
            raise DataError(f"VIBI explains images N x C x H x W; got shape {tuple(x_train.shape)}")
        if x_val is None:
            cut = max(1, len(x_train) // 10)
            x_train, x_val = x_train[:-cut], x_train[-cut:]
        settings = VibiConfig(**{**self.settings, "epochs": epochs})
        c, h, w = x_train.shape[1:]
        check_fits(settings.explainer_type, settings.xpl_channels, settings.k, (c, h, w),
                   "the images")
        train_probs = self._probabilities(x_train)
        spec = VibiSpec(settings.explainer_type, settings.xpl_channels, settings.width_multiplier, c, h, w,
                        train_probs.shape[1], settings.k, settings.fill)
        torch.manual_seed(self.seed)
        self.model = VibiModel(spec).to(self.device)
        train(self.model, settings, Split(x_train.to(self.device), train_probs),
              Split(x_val.to(self.device), self._probabilities(x_val)), seed=self.seed,
              history=History(), show_progress=show_progress,
              blackbox=self.blackbox.to(self.device))
        return self

    def _fitted(self) -> VibiModel:
        if self.model is None:
            raise RuntimeError("call fit (or VIBI.load) before attribute")
        return self.model.eval()

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Captum's call shape: a map the size of `inputs`, each chunk's explanation probability
        p(z | x) spread over its pixels. `target` is accepted for the shape and ignored: VIBI
        explains the black box's own prediction."""
        explainer = ExplainerDistribution("vibi", self._fitted(), self.blackbox)
        return explainer.attribute(inputs.to(self.device).float(), target)

    def top_k(self, inputs: torch.Tensor) -> torch.Tensor:
        """Boolean pixel masks (N x C x H x W) of the k chunks kept for each image."""
        model = self._fitted()
        with torch.inference_mode():
            _, mask, _ = model.explain(inputs.to(self.device).float())
            return model.pixel_mask(mask).expand(-1, inputs.shape[1], -1, -1).bool()

    def save(self, path: str | Path) -> None:
        """Write the trained explainer in the pipeline's VIBI format (`save_vibi`, weights-only
        loadable) with this explainer's settings and seed."""
        save_vibi(self._fitted(), path, settings=self.settings, seed=self.seed)

    def export(self, path: str | Path) -> None:
        """Write the black box and this explainer as one program that needs only torch to run
        (`export`): what `xai.pipeline.serving` serves."""
        export(self._fitted(), self.blackbox, path)

    @classmethod
    def load(cls, path: str | Path, blackbox: Model,
             device: torch.device | str | None = None) -> VIBI:
        """A VIBI saved by `save`, or trained by the pipeline (`models/vibi.pt`, whose settings
        are the spec's, the rest library defaults), explaining `blackbox`."""
        state = load_torch(path, kind=KIND, required=("spec", "state_dict"),
                           older_kinds=(OLDER_KIND,))
        model = vibi_from_state(state, path)
        s = {**asdict(_DEFAULTS), **{key: state[key] for key in ("beta",) if key in state},
             **_renamed(state.get("settings", {}))}
        spec = model.spec
        vibi = cls(blackbox, k=spec.k, beta=s["beta"], explainer=spec.explainer_type,
                   xpl_channels=spec.xpl_channels, width_multiplier=spec.width_multiplier,
                   objective=s["objective"], num_samples=s["num_samples"], lr=s["lr"],
                   batch_size=s["batch_size"], tau=(s["tau_start"], s["tau_end"]),
                   warmup_steps=s["warmup_steps"], fill=spec.fill, seed=int(state.get("seed", 0)),
                   device=device)
        # in the layout training leaves it in, so a loaded VIBI explains to the bit as the fitted one
        vibi.model = model.to(vibi.device, memory_format=CONV_LAYOUT)
        return vibi


def _renamed(settings: dict[str, object]) -> dict[str, object]:
    """Settings saved under an older field name, in today's names."""
    return {("width_multiplier" if key == "width" else key): value
            for key, value in settings.items()}


def export_format(blackbox: nn.Module) -> str:
    """`export` (a torch.export program), or `torchscript` when the black box holds a TorchScript
    program, which torch.export cannot trace through."""
    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in blackbox.modules())
    return "torchscript" if scripted else "export"


def export(model: VibiModel, blackbox: nn.Module, path: str | Path) -> None:
    """Write `ExplainedPrediction(model, blackbox)` on the CPU as a program that runs with torch
    alone (no xai, no Python source): a torch.export program with a dynamic batch size (`.pt2`),
    or a TorchScript trace (`.pt`) when the black box is TorchScript (`export_format`; `path`
    must carry that format's suffix, `EXPORT_SUFFIX`). `load_export` reads it back; it gives
    the module's outputs to the bit on the same threads (the weights keep their memory layout:
    `VIBI.fit` leaves the black box channels-last, `load_blackbox` gives it as saved). Draws
    no random numbers."""
    fmt = export_format(blackbox)
    if Path(path).suffix != EXPORT_SUFFIX[fmt]:
        raise ValueError(f"{path}: this black box exports as {fmt}; name the file "
                         f"*{EXPORT_SUFFIX[fmt]}")
    # copies in eval mode on the CPU; each weight keeps its memory layout
    module = ExplainedPrediction(copy.deepcopy(model).cpu().eval(),
                                 copy.deepcopy(blackbox).cpu().eval())
    spec = model.spec
    example = torch.zeros(2, spec.in_channels, spec.height, spec.width_px)
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # torch.export.save says so of every channels-last weight (its storage is not laid out
        # as its shape), then saves it whole, as a test checks
        warnings.filterwarnings("ignore", "No complete tensor found in the group")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example), buffer)
        else:
            batch = torch.export.Dim("batch")
            torch.export.save(torch.export.export(module, (example,),
                                                  dynamic_shapes=({0: batch},)), buffer)
    write_bytes(path, buffer.getvalue(), staged=False)


def load_export(path: str | Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The program `export` wrote, by its suffix: images -> `ExplainedPrediction`'s outputs."""
    if Path(path).suffix == EXPORT_SUFFIX["torchscript"]:
        return torch.jit.load(str(path), map_location="cpu").eval()
    return torch.export.load(str(path)).module()
