"""Which explanation is best: every method measured the same way on one fixed test subset.

Each method's attribution map is reduced to scores of the same chunks (the VIBI explainer's
s x s patches); at every pixel budget (a number of chunks kept) the evaluation measures
- `posthoc_accuracy_k<b>`: the explained model on the kept chunks agrees with its own prediction;
- `fidelity_k<b>`: one judge for every row, VIBI's trained approximator, on the kept chunks agrees
  with the black box (so rows are comparable; L2X's own approximator is reported by its stage);
and, budget-free, the deletion and insertion AUC of the explained model's probability for its
prediction, the sparseness (Gini) of the chunk scores, and Captum's infidelity and
max-sensitivity of the normalised attribution maps on a smaller subset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn
from tqdm import tqdm

from xai.attribution import Attribution
from xai.measures import (auc, chunk_scores, deletion_insertion, expand, posthoc_agreement,
                          sparseness, top_k_mask)
from xai.training import predict


@dataclass(frozen=True)
class Settings:
    budgets: tuple[int, ...]
    chunk: int
    curve_points: int
    robustness_images: int
    perturbations: int
    sensitivity_radius: float
    noise_std: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class MethodReport:
    """One row of the table and the mean deletion / insertion curves behind its AUCs."""

    name: str
    model_name: str
    measures: dict[str, float]
    deletion: torch.Tensor
    insertion: torch.Tensor
    fractions: torch.Tensor


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
             target: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], target[i:i + batch_size])
                      for i in range(0, len(x), batch_size)])


def _normalised(attribution: Attribution) -> Callable[..., torch.Tensor]:
    """Attributions scaled to unit L1 norm per image, so robustness is comparable across methods."""
    def explain(inputs: torch.Tensor | tuple[torch.Tensor], target: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor]:
        packed = isinstance(inputs, tuple)  # Captum's sensitivity_max passes a 1-tuple
        a = attribution.attribute(inputs[0] if packed else inputs, target=target).float()
        a = a / a.abs().flatten(1).sum(1).clamp_min(1e-12)[:, None, None, None]
        return (a,) if packed else a
    return explain


def _robustness(attribution: Attribution, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                s: Settings) -> dict[str, float]:
    """Captum's infidelity (Gaussian perturbations) and max-sensitivity (uniform in a ball)."""
    explain = _normalised(attribution)
    attr = explain(x, target)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * s.noise_std
        return noise, inputs - noise

    torch.manual_seed(s.seed)
    with torch.no_grad():
        infid = infidelity(model, perturb, x, attr, target=target,
                           n_perturb_samples=s.perturbations, normalize=True)
    torch.manual_seed(s.seed)
    sens = sensitivity_max(explain, x, perturb_radius=s.sensitivity_radius,
                           n_perturb_samples=s.perturbations, target=target)
    return {"infidelity": infid.mean().item(), "max_sensitivity": sens.mean().item()}


def evaluate_method(attribution: Attribution, model_name: str, x: torch.Tensor,
                    pred: torch.Tensor, blackbox_pred: torch.Tensor, judge: nn.Module,
                    s: Settings) -> MethodReport:
    """All measures of one method on inputs `x` (float [0, 1]); `pred`: the predictions of the
    model it explains, `blackbox_pred`: the black box's (what the judge must reproduce)."""
    model = attribution.model
    attr = _batched(attribution.attribute, x, pred, s.batch_size)
    scores = chunk_scores(attr, s.chunk)
    shape = tuple(x.shape[1:])
    measures: dict[str, float] = {}
    for b in s.budgets:
        keep = expand(top_k_mask(scores, b), shape, s.chunk)
        measures[f"posthoc_accuracy_k{b}"] = \
            posthoc_agreement(model, x, keep, pred).float().mean().item()
        measures[f"fidelity_k{b}"] = \
            posthoc_agreement(judge, x, keep, blackbox_pred).float().mean().item()
    deletion, insertion, fractions = deletion_insertion(
        model, x, scores, pred, s.chunk, points=s.curve_points, batch_size=s.batch_size)
    measures["deletion_auc"] = auc(deletion, fractions).mean().item()
    measures["insertion_auc"] = auc(insertion, fractions).mean().item()
    measures["sparseness"] = sparseness(scores).mean().item()
    n = s.robustness_images
    measures.update(_robustness(attribution, model, x[:n], pred[:n], s))
    return MethodReport(attribution.name, model_name, measures, deletion.mean(0).cpu(),
                        insertion.mean(0).cpu(), fractions.cpu())


def evaluate(methods: Sequence[tuple[Attribution, str]], x: torch.Tensor, blackbox: nn.Module,
             judge: nn.Module, s: Settings) -> list[MethodReport]:
    """Evaluate every (method, name of the model it explains) pair on `x`."""
    models = {id(m): m for m in (blackbox, *(a.model for a, _ in methods))}
    preds = {key: predict(m, x, s.batch_size).argmax(1) for key, m in models.items()}
    return [evaluate_method(attribution, model_name, x, preds[id(attribution.model)],
                            preds[id(blackbox)], judge, s)
            for attribution, model_name in tqdm(methods, desc="evaluate", unit="method")]


def table(reports: Sequence[MethodReport]) -> dict[str, dict[str, float]]:
    """method -> measure -> value (what `metrics/evaluation.json` holds)."""
    return {r.name: {"explains": r.model_name, **r.measures} for r in reports}


def markdown(reports: Sequence[MethodReport]) -> str:
    """The table as Markdown, one row per method."""
    measures = list(reports[0].measures)
    lines = ["| method | explains | " + " | ".join(measures) + " |",
             "|---|---|" + "---|" * len(measures)]
    for r in reports:
        lines.append(f"| {r.name} | {r.model_name} | "
                     + " | ".join(f"{r.measures[m]:.4f}" for m in measures) + " |")
    return "\n".join(lines) + "\n"
