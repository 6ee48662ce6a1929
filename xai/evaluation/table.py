"""Which explanation is best: every method measured the same way on one fixed test subset.

Each method's attribution map is reduced to scores of the same chunks (the VIBI explainer's
s x s patches, shared by the channels); a budget is a number of chunks kept. Per image:
- `posthoc_accuracy_k<b>`: the explained model, shown only the top-b chunks (the rest 0), agrees
  with its own prediction on the whole image;
- `fidelity_k<b>`: the neutral judge (`xai.models.judge`, trained on random chunk subsets, never on an
  explainer's) shown the same chunks agrees with the black box;
- with `road_budgets`, both again with the rest filled by ROAD's noisy linear imputation instead of
  0 (an image the model can read rather than a sparse pattern on black; the judge learnt both
  fills): `posthoc_accuracy_road_k<b>`, `fidelity_road_k<b>`;
- `deletion_auc` / `insertion_auc`: the explained model's probability of its prediction as the
  top chunks are removed (lower is better) / as only they are kept (higher is better), removed
  pixels set to 0; `deletion_auc_road` / `insertion_auc_road`: the same with ROAD's noisy linear
  imputation (Rong et al., 2022): most-relevant-first (MoRF) and least-relevant-first (LeRF);
- `encoding`: how much knowing that the method selected its top-k chunks adds to predicting the
  explained model's class beyond what the selected pixels show (nats; `xai.evaluation.encoding`,
  the definition of Puli et al., 2024); about 0 for a method that does not encode;
- `sparseness`: the Gini index of the chunk scores;
and on the first `robustness_images` images (none when it is 0): Captum's `infidelity` and
`max_sensitivity` of the unit-L1 chunk maps (the same resolution for every method), and the
parameter-randomisation sanity checks `randomization_spearman_top` / `_all`
(`xai.evaluation.sanity`; lower means the map depends on the model) beside their noise floor
`randomization_floor`, the same correlation between two explanations of the unrandomised model
with fresh randomness, all three from the same call on the same images; a method passes
(`sanity_passed`) only where `_all`'s interval lies below its floor's. Per method also the cost of
an explanation: `model_evaluations_per_image` (forward passes of the explained model while
attributing; wall seconds per image are in `MethodResult.seconds`). The judge's own agreement
with the black box on random subsets of each budget is `judge_agreement_k<b>`. With
`random_draws` > 0, every method also gets `fidelity_over_random_k<b>` (and
`fidelity_road_over_random_k<b>`): its judge fidelity on each image minus random chunks' expected
fidelity on that image, the mean over `random_draws` fresh random selections of b chunks; its
interval is the paired interval of the method's gain over random chunks, without the noise of a
single random draw per image. Every measure has a 95 % bootstrap interval over images, and every
method a paired interval of its difference to a reference method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn
from tqdm import tqdm

from xai.chunks import chunk_areas, chunk_scores, expand, spread, top_k_mask
from xai.data.imputation import noisy_linear_impute
from xai.evaluation.encoding import encoding_gain, paired_images
from xai.evaluation.measures import (
    agrees_on,
    auc,
    deletion_insertion,
    sparseness,
)
from xai.evaluation.sanity import randomised, spearman
from xai.evaluation.uncertainty import bootstrap, paired_difference, resample_indices
from xai.explain.attribution import Attribution
from xai.models.judge import Judge, agreement
from xai.models.vibi import Fill
from xai.settings import SEED_MAX, bounded
from xai.tensors import predict

#: Measures the headline table shows at the explainer's budget k, and every difference.
HEADLINE = ("posthoc_accuracy", "fidelity", "deletion_auc", "insertion_auc", "deletion_auc_road",
            "insertion_auc_road", "encoding")
#: Measures where lower is better (everything else: higher is better).
LOWER_IS_BETTER = {"deletion_auc", "deletion_auc_road", "encoding", "infidelity",
                   "max_sensitivity", "randomization_spearman_top", "randomization_spearman_all"}


@dataclass(frozen=True)
class MeasureConfig:
    """How the evaluation measures: budgets in chunks of `chunk` x `chunk` pixels, the headline
    budget `k`, curve resolution, subset sizes, perturbations, intervals, batching and the seed."""

    budgets: tuple[int, ...] = bounded((1, 2, 4, 8, 16), ge=1)
    k: int = bounded(4, ge=1)  # the explainer's budget: the headline column, encoding's selections
    chunk: int = bounded(4, ge=1)
    curve_points: int = bounded(17, ge=2)
    robustness_images: int = bounded(100, ge=0)  # 0: no robustness or sanity measures (costly)
    perturbations: int = bounded(8, ge=1)
    sensitivity_radius: float = bounded(0.02, gt=0)
    noise_std: float = bounded(0.1, gt=0)
    road_noise_std: float = bounded(0.01, ge=0)
    road_budgets: bool = False  # also posthoc_accuracy_road_k<b>, fidelity_road_k<b> (ROAD fill)
    random_draws: int = bounded(0, ge=0)  # > 0: fidelity_over_random_k<b> from this many draws
    encoding_folds: int = bounded(5, ge=2)
    bootstrap: int = bounded(1000, ge=10)
    batch_size: int = bounded(1024, ge=1)
    seed: int = bounded(0, ge=0, le=SEED_MAX)


@dataclass
class MethodResult:
    """One method: per-image values of every measure, and the mean curves behind its AUCs."""

    name: str
    model_name: str
    per_image: dict[str, torch.Tensor]
    curves: dict[str, torch.Tensor]  # deletion, insertion, deletion_road, insertion_road
    fractions: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase
    evaluations_per_image: float = 0.0  # forward passes of the explained model while attributing

    @property
    def seconds_per_image(self) -> float:
        """Wall seconds of explaining one image (the attribution phase, batched)."""
        return self.seconds["attribute"] / len(next(iter(self.per_image.values())))


@dataclass
class Evaluation:
    """Every method's results and the judge's agreement with the black box on random subsets."""

    methods: list[MethodResult]
    judge_agreement: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Explained:
    """One method under evaluation: its name, the model it explains and that model's name."""

    name: str
    method: Attribution
    model: nn.Module
    model_name: str


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
             target: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], target[i:i + batch_size])
                      for i in range(0, len(x), batch_size)])


def _unit_chunk_scores(attribution: Attribution, chunk: int) -> Callable[..., torch.Tensor]:
    """The method's chunk scores scaled to unit L1 per image (Captum passes a 1-tuple)."""
    def explain(inputs: torch.Tensor | tuple[torch.Tensor], target: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor]:
        packed = isinstance(inputs, tuple)
        s = chunk_scores(attribution.attribute(inputs[0] if packed else inputs, target=target)
                         .float(), chunk)
        s = (s / s.sum(1, keepdim=True).clamp_min(1e-12)).contiguous()
        return (s,) if packed else s
    return explain


def _robustness(entry: Explained, scores: torch.Tensor, x: torch.Tensor,
                target: torch.Tensor, s: MeasureConfig) -> dict[str, torch.Tensor]:
    """Per image: Captum's infidelity (Gaussian perturbations) and max-sensitivity (uniform in a
    ball) of the unit-L1 chunk maps."""
    shape = tuple(x.shape[1:])
    unit = scores / scores.sum(1, keepdim=True).clamp_min(1e-12)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * s.noise_std
        return noise, inputs - noise

    with _global_generators_at(s.seed), torch.no_grad():
        infid = infidelity(entry.model, perturb, x, spread(unit, shape, s.chunk),
                           target=target, n_perturb_samples=s.perturbations, normalize=True)
    with _global_generators_at(s.seed):
        sens = sensitivity_max(_unit_chunk_scores(entry.method, s.chunk), x,
                               perturb_radius=s.sensitivity_radius,
                               n_perturb_samples=s.perturbations, target=target)
    return {"infidelity": infid.float(), "max_sensitivity": sens.float()}


def _rebuildable(method: Attribution) -> bool:
    """Whether `dataclasses.replace(method, model=...)` gives the method for another model."""
    return dataclasses.is_dataclass(method) and any(
        f.name == "model" for f in dataclasses.fields(method))


def _scores_with(entry: Explained, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 s: MeasureConfig, seed: int) -> torch.Tensor:
    """Chunk scores of the method rebuilt for `model`, its own seed (if it has one) and the global
    generators (SmoothGrad's, GradientShap's) set to `seed`: two calls with one seed draw the same
    coalitions and noise, so what differs between them is the model."""
    seeded = {"seed": seed} if any(f.name == "seed" for f in dataclasses.fields(entry.method)) \
        else {}
    method = dataclasses.replace(entry.method, model=model, **seeded)
    with _global_generators_at(seed):
        return chunk_scores(_batched(method.attribute, x, target, s.batch_size), s.chunk)


@contextlib.contextmanager
def _global_generators_kept() -> Iterator[None]:
    """Leave torch's and numpy's global generators as they were (the other measures draw on)."""
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


@contextlib.contextmanager
def _global_generators_at(seed: int) -> Iterator[None]:
    """torch's and numpy's global generators seeded with `seed` inside, as they were after: what a
    method draws from them (SmoothGrad's, GradientShap's noise) depends on `seed` alone, not on
    what the methods and measures before it drew."""
    with _global_generators_kept():
        torch.manual_seed(seed)
        np.random.seed(seed)
        yield


def _sanity(entry: Explained, x: torch.Tensor, target: torch.Tensor, s: MeasureConfig
            ) -> dict[str, torch.Tensor]:
    """Per image: Spearman correlation of the chunk scores on the trained model with those on the
    model with its top layer, and with all layers, re-initialised, and the noise floor: the
    correlation of two explanations of the trained model with different randomness (1 for a
    deterministic method). One call shape and the same images for all four maps; nothing for a
    method that cannot be rebuilt on another model."""
    if not _rebuildable(entry.method):
        return {}
    base = _scores_with(entry, entry.model, x, target, s, s.seed)
    again = _scores_with(entry, entry.model, x, target, s, s.seed + 1)
    out = {"randomization_floor": spearman(base, again).float()}
    for key, top in (("randomization_spearman_top", 1), ("randomization_spearman_all", None)):
        other = randomised(entry.model, top, s.seed)
        out[key] = spearman(base, _scores_with(entry, other, x, target, s, s.seed)).float()
    return out


@contextlib.contextmanager
def _counting(entry: Explained) -> Iterator[list[int]]:
    """Count the rows of every batch the explained model sees inside the block: `entry.model`,
    or the method's own copy of it (e.g. integrated gradients' channels-last one)."""
    seen = [0]

    def count(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        seen[0] += int(inputs[0].shape[0])
    own = getattr(entry.method, "model", None)
    models = [entry.model] + ([own] if isinstance(own, nn.Module) and own is not entry.model
                              and _same_weights(own, entry.model) else [])
    hooks = [m.register_forward_pre_hook(count) for m in models]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same parameters (a copy, in whatever memory layout)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(x.shape == y.shape and torch.equal(x, y)
                                      for x, y in zip(pa, pb, strict=True))


def _road_fill(s: MeasureConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed)

    def fill(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return noisy_linear_impute(x, keep > 0.5, s.road_noise_std, generator)
    return fill


class _PhaseClock:
    """Wall seconds of consecutive phases: what each measure costs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def _budget_fills(x: torch.Tensor, keep: torch.Tensor,
                  road: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
                  ) -> dict[str, torch.Tensor]:
    """`x` with only `keep` shown, by the measures' key suffix: "" the rest 0, "_road" (with a
    `road` fill) the rest imputed."""
    return {"": x * keep, **({"_road": road(x, keep)} if road is not None else {})}


def _judged_log_probs(judge: Judge, x: torch.Tensor, chunks: torch.Tensor, s: MeasureConfig
                      ) -> torch.Tensor:
    """The judge's class log-probabilities for `x` with only `chunks` (N x d) kept, 0-filled."""
    keep = expand(chunks, tuple(x.shape[1:]), s.chunk)
    with torch.inference_mode():
        return torch.cat([judge(x[i:i + s.batch_size] * keep[i:i + s.batch_size],
                                keep[i:i + s.batch_size]).float().log_softmax(1)
                          for i in range(0, len(x), s.batch_size)])


def evaluate_method(entry: Explained, x: torch.Tensor, pred: torch.Tensor,
                    blackbox_pred: torch.Tensor, judge: Judge | None, num_classes: int,
                    s: MeasureConfig, pairs: torch.Tensor | None = None) -> MethodResult:
    """All measures of one method on inputs `x` (float [0, 1]); `pred`: the predictions of the
    model it explains, `blackbox_pred`: the black box's (what the judge must reproduce; without a
    judge there is no `fidelity_k<b>`); `pairs`: another image for every image (a derangement):
    the encoding measure's comparison shows each image under its partner's selection."""
    clock = _PhaseClock()
    model = entry.model
    with _counting(entry) as seen, _global_generators_at(s.seed):
        scores = chunk_scores(_batched(entry.method.attribute, x, pred, s.batch_size).float(),
                              s.chunk)
    clock.lap("attribute")
    shape = tuple(x.shape[1:])
    per_image: dict[str, torch.Tensor] = {}
    road = _road_fill(s) if s.road_budgets else None
    for b in s.budgets:
        keep = expand(top_k_mask(scores, b), shape, s.chunk)
        for suffix, filled in _budget_fills(x, keep, road).items():
            per_image[f"posthoc_accuracy{suffix}_k{b}"] = agrees_on(model, filled, pred).float()
            if judge is not None:
                with torch.inference_mode():
                    judged = judge(filled, keep)
                per_image[f"fidelity{suffix}_k{b}"] = (judged.argmax(1) == blackbox_pred).float()
    curves: dict[str, torch.Tensor] = {}
    for suffix, fill in (("", None), ("_road", _road_fill(s))):
        deletion, insertion, fractions = deletion_insertion(
            model, x, scores, pred, s.chunk, points=s.curve_points, batch_size=s.batch_size,
            fill=fill)
        clock.lap(f"curves{suffix}")
        per_image[f"deletion_auc{suffix}"] = auc(deletion, fractions)
        per_image[f"insertion_auc{suffix}"] = auc(insertion, fractions)
        curves[f"deletion{suffix}"] = deletion.mean(0).cpu()
        curves[f"insertion{suffix}"] = insertion.mean(0).cpu()
    if judge is not None and pairs is not None:
        selected = top_k_mask(scores, s.k)
        per_image["encoding"] = encoding_gain(
            _judged_log_probs(judge, x, selected, s), selected,
            _judged_log_probs(judge, x, selected[pairs], s), selected[pairs], pred, num_classes,
            s.encoding_folds)
    per_image["sparseness"] = sparseness(scores)
    n = s.robustness_images
    clock.lap("judge_encoding_sparseness")
    if n > 0:
        per_image.update(_robustness(entry, scores[:n], x[:n], pred[:n], s))
        clock.lap("robustness")
        per_image.update(_sanity(entry, x[:n], pred[:n], s))
        clock.lap("sanity")
    return MethodResult(entry.name, entry.model_name,
                        {k: v.detach().float().cpu() for k, v in per_image.items()}, curves,
                        fractions.cpu(), clock.seconds, seen[0] / len(x))


def over_random_key(fidelity_key: str) -> str:
    """`fidelity[_road]_k<b>` -> `fidelity[_road]_over_random_k<b>`: the gain over random chunks."""
    measure, budget = fidelity_key.rsplit("_k", 1)
    return f"{measure}_over_random_k{budget}"


def random_chunks_fidelity(judge: Judge, x: torch.Tensor, blackbox_pred: torch.Tensor,
                           s: MeasureConfig) -> dict[str, torch.Tensor]:
    """Per image, random chunks' expected judge fidelity `fidelity[_road]_k<b>` at every budget:
    the mean over `s.random_draws` uniformly random selections of b chunks (each draw's budgets
    nested, as the random method's top-b are), drawn from a generator of their own (seeded
    `s.seed + 1`, so not the random method's draw), removed pixels 0 or, with `road_budgets`,
    filled by ROAD's imputation."""
    shape = tuple(x.shape[1:])
    d = chunk_areas(shape, s.chunk).shape[1]
    generator = torch.Generator().manual_seed(s.seed + 1)
    road = _road_fill(s) if s.road_budgets else None
    hits: dict[str, torch.Tensor] = {}
    for _ in tqdm(range(s.random_draws), desc="random chunks", unit="draw", leave=False):
        scores = torch.rand(len(x), d, generator=generator).to(x.device)
        for b in s.budgets:
            keep = expand(top_k_mask(scores, b), shape, s.chunk)
            for suffix, filled in _budget_fills(x, keep, road).items():
                with torch.inference_mode():
                    hit = (judge(filled, keep).argmax(1) == blackbox_pred).float()
                key = f"fidelity{suffix}_k{b}"
                hits[key] = hits[key] + hit if key in hits else hit
    return {key: total / s.random_draws for key, total in hits.items()}


def run_methods(entries: Sequence[Explained], x: torch.Tensor, blackbox: nn.Module,
                judge: Judge | None, s: MeasureConfig) -> Evaluation:
    """Evaluate every method on `x` (float [0, 1]); `blackbox` is the model the judge mimics."""
    models = {id(m): m for m in (blackbox, *(e.model for e in entries))}
    logits = {key: predict(m, x, s.batch_size) for key, m in models.items()}
    blackbox_pred = logits[id(blackbox)].argmax(1)
    num_classes = logits[id(blackbox)].shape[1]
    pairs = paired_images(len(x), s.seed) if len(x) > 1 else None
    results = [evaluate_method(entry, x, logits[id(entry.model)].argmax(1), blackbox_pred, judge,
                               num_classes, s, pairs)
               for entry in tqdm(entries, desc="evaluate", unit="method")]
    judged = {}
    if judge is not None:
        g = torch.Generator(device=x.device).manual_seed(s.seed)
        judged = {f"judge_agreement_k{b}": agreement(judge, x, blackbox_pred, g, b,
                                                     batch_size=s.batch_size).float().cpu()
                  for b in s.budgets}
        if s.random_draws:
            expected = random_chunks_fidelity(judge, x, blackbox_pred, s)
            for r in results:
                r.per_image.update({over_random_key(key): r.per_image[key] - mean.cpu()
                                    for key, mean in expected.items()})
    return Evaluation(results, judged)


@dataclass(frozen=True)
class Report:
    """What `evaluate` returns: the method x measure `table` (what `metrics/evaluation.json`
    holds), the paired `differences` to the reference method, and the per-image `evaluation`
    (curves, timings) behind both.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(10, 1, 4, 4)
    >>> methods = {"occlusion": xai.Occlusion(model, chunk=2),
    ...            "random": xai.RandomChunks(model, chunk=2, seed=0)}
    >>> report = xai.evaluate(methods, model, x, chunk=2, k=1, budgets=(1,), curve_points=5,
    ...                       robustness_images=0, bootstrap=20, encoding_folds=2,
    ...                       reference="random")
    >>> isinstance(report, xai.Report), report.settings.k, report.reference
    (True, 1, 'random')
    >>> row = report.table["methods"]["occlusion"]  # a row per method, every measure's interval
    >>> all(f"{m}_ci_low" in row and f"{m}_ci_high" in row for m in ("insertion_auc", "sparseness"))
    True
    >>> sorted(report.differences), sorted(report.differences["occlusion"]["insertion_auc"])
    (['occlusion'], ['ci_high', 'ci_low', 'difference'])
    >>> [r.name for r in report.evaluation.methods]
    ['occlusion', 'random']
    >>> print(report.markdown().splitlines()[0])
    ### At the explainer's budget (k = 1 chunks); mean [95 % interval]
    """

    table: dict[str, dict]
    differences: dict[str, dict]
    evaluation: Evaluation
    settings: MeasureConfig
    reference: str | None = None

    def markdown(self, note: str = "") -> str:
        """The tables as Markdown (see `markdown`)."""
        s = self.settings
        return markdown(self.table, s.k, s.budgets, s.robustness_images, self.differences, note,
                        self.reference or "", s.random_draws)


def evaluate(methods: Mapping[str, Attribution | tuple[Attribution, str]],
             model: nn.Module | Mapping[str, nn.Module], x: torch.Tensor, *,
             judge: Judge | None = None, reference: str | None = None,
             settings: MeasureConfig | None = None, **changes: Any) -> Report:
    """Measure every explanation method the same way on images `x` (N x C x H x W, floats in
    [0, 1]) and return the method x measure table with 95 % bootstrap intervals over images.

    `methods` maps a name to a method (anything with `attribute(inputs, target)`, e.g. the classes
    of `xai.explain.attribution` or `xai.VIBI`) explaining `model`. With several models, `model` maps
    names to models (the first is the black box the judge mimics) and each method is given as
    `(method, model name)`. `judge` (`xai.models.judge.Judge`) adds the fidelity columns; `reference`
    names the method every other is compared with, paired over images. `settings` (or keyword
    changes to its defaults, e.g. `chunk=4, k=4, budgets=(1, 4)`) say how to measure; `k` is
    always one of the budgets.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(10, 1, 4, 4)
    >>> methods = {"saliency": xai.GradientSaliency(model),
    ...            "random": xai.RandomChunks(model, chunk=2, seed=0)}
    >>> report = xai.evaluate(methods, model, x, chunk=2, k=1, budgets=(1, 2), curve_points=5,
    ...                       robustness_images=0, bootstrap=20, encoding_folds=2)
    >>> sorted(report.table["methods"])  # a row per method
    ['random', 'saliency']
    >>> row = report.table["methods"]["saliency"]
    >>> row["explains"], row["deletion_auc_ci_low"] <= row["deletion_auc_ci_high"]  # 95 % interval
    ('model', True)
    >>> sorted(key for key in row if key.startswith("posthoc_accuracy") and "_ci_" not in key)
    ['posthoc_accuracy_k1', 'posthoc_accuracy_k2']
    """
    models = dict(model) if isinstance(model, Mapping) else {"model": model}
    if not models:
        raise ValueError("evaluate needs a model")
    default = next(iter(models))
    entries = []
    for name, given in methods.items():
        method, model_name = given if isinstance(given, tuple) else (given, default)
        if model_name not in models:
            raise ValueError(f"method {name!r} explains {model_name!r}; the models are "
                             f"{sorted(models)}")
        entries.append(Explained(name, method, models[model_name], model_name))
    if not entries:
        raise ValueError("evaluate needs at least one method")
    if reference is not None and reference not in methods:
        raise ValueError(f"reference {reference!r} is not one of the methods {sorted(methods)}")
    s = dataclasses.replace(settings or MeasureConfig(), **changes)
    chunks = chunk_areas(tuple(x.shape[1:]), s.chunk).shape[1]
    if max(*s.budgets, s.k) > chunks:
        raise ValueError(f"budgets {list(s.budgets)} and k = {s.k} must be at most the "
                         f"{chunks} chunks of {s.chunk} x {s.chunk} pixels in the images")
    s = dataclasses.replace(s, budgets=tuple(sorted(set(s.budgets) | {s.k})))
    evaluation = run_methods(entries, x, models[default], judge, s)
    diffs = differences(evaluation, s, reference) if reference is not None else {}
    return Report(summary(evaluation, s), diffs, evaluation, s, reference)


# ----------------------------------------------------------------------------- summaries


def _with_interval(values: Mapping[str, torch.Tensor], indices: torch.Tensor
                   ) -> dict[str, float]:
    out: dict[str, float] = {}
    for measure, v in values.items():
        ci = bootstrap(v, indices)
        out[measure] = ci.mean
        out[f"{measure}_ci_low"] = ci.low
        out[f"{measure}_ci_high"] = ci.high
    return out


def summary(ev: Evaluation, s: MeasureConfig) -> dict[str, dict]:
    """What `metrics/evaluation.json` holds: {"judge": {...}, "methods": {name: {"explains",
    measure, measure_ci_low, measure_ci_high, ...}}}; intervals over images, one resampling for
    every method."""
    n = len(next(iter(ev.methods[0].per_image.values())))
    indices = resample_indices(n, s.bootstrap, s.seed)
    methods = {r.name: {"explains": r.model_name, **_with_interval(r.per_image, indices),
                        "model_evaluations_per_image": r.evaluations_per_image}
               for r in ev.methods}
    for row in methods.values():
        if "randomization_floor" in row:
            row["sanity_passed"] = float(row["randomization_spearman_all_ci_high"]
                                         < row["randomization_floor_ci_low"])
    return {"judge": _with_interval(ev.judge_agreement, indices), "methods": methods}


def differences(ev: Evaluation, s: MeasureConfig, reference: str = "vibi") -> dict[str, dict]:
    """`reference` minus every other method on the headline measures at budget k (and every
    measure at every budget): {method: {measure: {difference, ci_low, ci_high}}}, paired over
    images."""
    by_name = {r.name: r for r in ev.methods}
    ref = by_name[reference].per_image
    n = len(next(iter(ref.values())))
    indices = resample_indices(n, s.bootstrap, s.seed)
    out: dict[str, dict] = {}
    for r in ev.methods:
        if r.name == reference:
            continue
        rows = {}
        for measure, v in r.per_image.items():
            if measure not in ref:  # e.g. a sanity check one of the two methods cannot run
                continue
            if "_over_random_" in measure:  # the same difference as the fidelity's
                continue
            ci = paired_difference(ref[measure], v, indices)
            rows[measure] = {"difference": ci.mean, "ci_low": ci.low, "ci_high": ci.high}
        out[r.name] = rows
    return out


def interval_cell(row: Mapping[str, float], measure: str, signed: bool = False) -> str:
    """`mean [low, high]` of `measure` in a table row (`signed`: each with its sign, for a
    difference), or "n/a" where the row lacks it."""
    if measure not in row:
        return "n/a"
    f = "+.3f" if signed else ".3f"
    return (f"{row[measure]:{f}} [{row[measure + '_ci_low']:{f}}, "
            f"{row[measure + '_ci_high']:{f}}]")


def headline_key(measure: str, k: int) -> str:
    """A headline measure's key in the table: at budget `k` for the per-budget measures."""
    return f"{measure}_k{k}" if measure in ("posthoc_accuracy", "fidelity") else measure


def construction_note(objective: str, k: int, fill: Fill = "zero") -> str:
    """What favours VIBI and L2X by construction under their training `objective` and the `fill`
    of the removed pixels they were trained with (`vibi.fill`)."""
    if objective == "blackbox" and fill == "smooth":
        return (f"VIBI and L2X are trained to make the black box keep its prediction on their k "
                f"chunks with the rest filled smoothly from them (objective `blackbox`, fill "
                f"`smooth`, close to ROAD's imputation), so `posthoc_accuracy_road_k{k}` and the "
                f"ROAD curves favour them by construction, `posthoc_accuracy_k{k}` and the 0-fill "
                f"curves less so; the judge's `fidelity_k{k}` and `fidelity_road_k{k}` do not.")
    if objective == "blackbox":
        return (f"VIBI and L2X are trained to make the black box keep its prediction on their k "
                f"0-filled chunks (objective `blackbox`), so `posthoc_accuracy_k{k}` and the "
                f"0-fill curves favour them by construction; the judge's `fidelity_k{k}` and the "
                f"ROAD curves do not.")
    return (f"VIBI and L2X are trained with their own approximator (objective `{objective}`): no "
            f"column here is their training objective; the judge was trained on random chunks.")


def markdown(table: Mapping[str, dict], k: int, budgets: Sequence[int], robustness_images: int,
             diffs: Mapping[str, dict] | None = None, note: str = "", reference: str = "vibi",
             random_draws: int = 0) -> str:
    """The tables as Markdown: headline measures at k (under `note`), every budget, the other
    measures, the judge, each method's gain over random chunks (with `random_draws` > 0) and the
    paired differences to `reference`; each value with its 95 % interval over images; "n/a"
    where a method lacks a measure, and no fidelity or judge tables without a judge."""
    methods = table["methods"]
    judged = bool(table["judge"])
    cols = [headline_key(m, k) for m in HEADLINE
            if any(headline_key(m, k) in row for row in methods.values())]
    lines = [f"### At the explainer's budget (k = {k} chunks); mean [95 % interval]", "",
             *([note, ""] if note else []),
             "| method | explains | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for name, row in methods.items():
        lines.append(f"| {name} | {row['explains']} | "
                     + " | ".join(interval_cell(row, c) for c in cols) + " |")
    for measure in ("posthoc_accuracy", "fidelity") if judged else ("posthoc_accuracy",):
        lines += ["", f"### {measure} at every budget", "",
                  "| method | " + " | ".join(f"k = {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name, row in methods.items():
            lines.append(f"| {name} | " + " | ".join(interval_cell(row, f"{measure}_k{b}")
                                                      for b in budgets) + " |")
    others = ("sparseness", "infidelity", "max_sensitivity", "randomization_spearman_top",
              "randomization_spearman_all", "randomization_floor")
    blind = [name for name in ("vibi", "l2x", "random") if name in methods]
    scope = (f"robustness and sanity on {robustness_images} images" if robustness_images
             else "robustness and sanity not measured")
    lines += ["", f"### Other measures ({scope})",
              "", "A method passes the sanity check only where its all-layer randomisation "
              "correlation lies below its noise floor (two explanations of the trained model with "
              "fresh randomness; 1 for a deterministic method), both intervals apart.",
              *(["VIBI, L2X and random chunks do not read the model when they explain (a trained "
                 "explainer, a random draw), so their maps do not change with it and their "
                 "randomisation correlations are 1: the sanity check cannot pass them."]
                if blind else []),
              "", "| method | " + " | ".join(others) + " | sanity passed | model evaluations "
              "per image |", "|---|" + "---|" * (len(others) + 2)]
    for name, row in methods.items():
        passed = {1.0: "yes", 0.0: "no"}.get(row.get("sanity_passed", -1.0), "n/a")
        lines.append(f"| {name} | " + " | ".join(interval_cell(row, m) for m in others)
                     + f" | {passed} | {row['model_evaluations_per_image']:g} |")
    judge = table["judge"]
    if judged:
        lines += ["", "### The judge: agreement with the black box on random chunk subsets", "",
                  "| " + " | ".join(f"k = {b}" for b in budgets) + " |",
                  "|" + "---|" * len(budgets),
                  "| " + " | ".join(interval_cell(judge, f"judge_agreement_k{b}") for b in budgets)
                  + " |"]
    gains = [f"fidelity{fill}_over_random_k{b}" for fill in ("", "_road") for b in budgets
             if any(f"fidelity{fill}_over_random_k{b}" in row for row in methods.values())]
    if gains:
        lines += ["", "### Gain over random chunks: judge fidelity minus random chunks' expected "
                  f"fidelity on the same image ({random_draws} draws); mean [95 % interval]", "",
                  "| method | " + " | ".join(
                      f"k = {c.rsplit('_k', 1)[1]}" + (" (ROAD fill)" if "_road_" in c else "")
                      for c in gains) + " |",
                  "|---|" + "---|" * len(gains)]
        for name, row in methods.items():
            lines.append(f"| {name} | " + " | ".join(interval_cell(row, c, signed=True)
                                                      for c in gains) + " |")
    if diffs:
        label = "VIBI" if reference == "vibi" else f"`{reference}`"
        lines += ["", f"### {label} minus each method (paired over images); mean [95 % interval]",
                  "",
                  "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name, rows in diffs.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{rows[c]['difference']:+.3f} [{rows[c]['ci_low']:+.3f}, "
                f"{rows[c]['ci_high']:+.3f}]" if c in rows else "n/a" for c in cols) + " |")
    return "\n".join(lines) + "\n"
