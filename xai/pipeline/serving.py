"""The explainer where predictions are served: VIBI (or L2X) with its black box as an MLflow Model,
registered, promoted by a rule, and the request body that asks a served model to explain an image.

- `save_explainer` writes the model's folder (MLflow's pyfunc flavor from code, as `mlflow.shap`
  makes an explainer a model): the program `xai.explain.vibi.export` writes (the black box and the
  explainer in one, torch alone runs it), `served_explainer.py` as the model's code (it checks
  every request), an output signature, a test image as the input example, pinned pip
  requirements, and its config: the input shape, the class names, `max_batch`, `threads`.
  Neither loading nor serving it needs this repository or params.yaml.
- `log_explainer`: `train_l2x` and `train_vibi` log it as a model of their stage run (MLflow 3's
  logged models); `train_vibi` also registers it as a new version of `serving.registered_model`,
  tagged with what it explains (data set, input shape, k), so every pipeline adds a version.
- `promote`: the `evaluate` stage's rule for the alias `champion`, the version to serve. The
  version made from the evaluated `models/vibi.pt` (found by its md5 tag) becomes the champion when
  its judge fidelity at k (`evaluate`'s `fidelity_k{k}` of `vibi`) is at least the champion's;
  a champion of another data set, input shape or k is not compared and stays (a registered model
  serves one kind of input). The decision, the metric, the evaluate run and the champion it
  replaced are tags of the version.
- `python -m xai.pipeline.serving request`: the JSON body that explains prepared test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xai.data.prepared import load_dataset
from xai.explain.vibi import EXPORT_SUFFIX, export, export_format
from xai.models.blackbox import load_blackbox
from xai.models.vibi import VibiModel
from xai.pipeline import tracking
from xai.pipeline.config import ServingConfig
from xai.tensors import to_unit

#: The model's code, copied into every model folder (it imports torch, numpy and mlflow only).
MODEL_CODE = Path(__file__).with_name("served_explainer.py")
#: The alias of the version to serve (`models:/<name>@champion`).
CHAMPION = "champion"
#: Version tags that must be the champion's for a version to be compared with it.
COMPARABLE = {"xai.dataset": "data set", "xai.input_shape": "input shape", "xai.k": "k"}
#: The name of the logged model in its run.
LOGGED_NAME = "explainer"


def requirements() -> list[str]:
    """What the model needs, pinned to the versions that wrote it (given, not inferred: inferring
    loads the model in a subprocess)."""
    import mlflow

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]


def signature() -> Any:
    """The output schema, per image: the class, its label and probabilities, the kept chunks, the
    pixel mask and p(z | x). No input schema: MLflow would refuse some inputs before the model
    with messages that do not name the problem (an empty batch as "an input of type list");
    the model checks its input itself (`served_explainer.images`)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    def nested(kind: str, depth: int) -> Any:
        return kind if depth == 0 else Array(nested(kind, depth - 1))

    return ModelSignature(outputs=Schema([
        ColSpec("long", "class"), ColSpec("string", "label"),
        ColSpec(nested("double", 1), "probabilities"), ColSpec(nested("long", 1), "chunks"),
        ColSpec(nested("string", 2), "mask"), ColSpec(nested("double", 3), "p_z")]))


def save_explainer(folder: str | Path, model: VibiModel, blackbox: nn.Module,
                   classes: Sequence[str], example: torch.Tensor, max_batch: int,
                   threads: int = 1, mlflow_model: Any = None) -> None:
    """Write the explainer's MLflow Model into `folder` (which must not exist); `example` is one
    or more images N x C x H x W in [0, 1], the input example; a request of more than
    `max_batch` images is refused; `threads`: torch's threads per request; `mlflow_model` an
    `mlflow.models.Model` to fill (a logged model's), else a new one."""
    import mlflow

    spec = model.spec
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / f"explainer{EXPORT_SUFFIX[export_format(blackbox)]}"
        export(model, blackbox, program)
        mlflow.pyfunc.save_model(
            path=str(folder), python_model=str(MODEL_CODE), mlflow_model=mlflow_model,
            artifacts={"explainer": str(program)},
            model_config={"input_shape": [spec.in_channels, spec.height, spec.width_px],
                          "max_batch": max_batch, "classes": list(classes), "threads": threads},
            signature=signature(),
            input_example=example.detach().float().cpu().numpy(),
            pip_requirements=requirements())


def log_explainer(run: tracking.Run, model: VibiModel, blackbox_file: str | Path,
                  classes: Sequence[str], example: torch.Tensor, settings: ServingConfig,
                  tags: dict[str, Any]) -> str | None:
    """Log the explainer of the black box saved in `blackbox_file` (as loading the file gives it,
    so that the served answers are those of `load_blackbox` and `VIBI.load`) as a model of `run`:
    its id; None when tracking is off or lost. Draws from no random generator."""
    def log(client: Any, run: tracking.Run) -> str:
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        experiment = client.get_run(run.run_id).info.experiment_id
        logged = client.create_logged_model(experiment, name=LOGGED_NAME, source_run_id=run.run_id,
                                            tags={k: str(v) for k, v in tags.items()})
        client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        # (rebuilding the black box initialises its layers before loading the weights)
        with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
            folder = Path(tmp) / "model"
            save_explainer(folder, model, load_blackbox(blackbox_file), classes, example,
                           settings.max_batch, settings.threads,
                           Model(artifact_path=logged.artifact_location, run_id=run.run_id,
                                 model_uuid=logged.model_id, model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(folder))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        return logged.model_id

    return run.use_client(log)


def register(run: tracking.Run, name: str, model_id: str | None, tags: dict[str, Any]
             ) -> str | None:
    """Register logged model `model_id` of `run` as a new version of `name` (created on first
    use); the version number, None when tracking is off or lost."""
    def add(client: Any, run: tracking.Run) -> str:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name, description=(
                "The VIBI explainer with the black box it explains (xai). Serve the alias "
                f"`{CHAMPION}`, which the evaluate stage moves by judge fidelity: docs/serving.md"))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return str(client.create_model_version(name, f"models:/{model_id}", run_id=run.run_id,
                                               model_id=model_id,
                                               tags={k: str(v) for k, v in tags.items()}).version)

    return None if model_id is None else run.use_client(add)


def explainer_tags(dataset: str, spec: Any, beta: float, method: str) -> dict[str, Any]:
    """What a logged explainer explains, as tags of the model and of its registered version."""
    return {"xai.method": method, "xai.dataset": dataset,
            "xai.input_shape": "x".join(map(str, (spec.in_channels, spec.height, spec.width_px))),
            "xai.k": spec.k, "xai.beta": beta, "xai.pipeline": tracking.pipeline_id()}


def log_stage_explainer(run: tracking.Run, model: VibiModel, blackbox_file: str | Path,
                        classes: Sequence[str], example: torch.Tensor, settings: ServingConfig,
                        tags: dict[str, Any], registered: bool) -> dict[str, Any]:
    """A training stage's part: log the explainer (`log_explainer`), and register it
    (`registered`) as a version of `settings.registered_model`; the model id, the version and
    the seconds it took."""
    started = time.perf_counter()
    model_id = log_explainer(run, model, blackbox_file, classes, example, settings, tags)
    version = register(run, settings.registered_model, model_id, tags) if registered else None
    return {"model_id": model_id, "version": version,
            "model_log_seconds": round(time.perf_counter() - started, 2)}


def promote(run: tracking.Run, name: str, output: str | Path, metric: str, value: float
            ) -> str | None:
    """Apply the promotion rule (the module's docstring) to the version made from `output`
    (models/vibi.pt) evaluated at `metric` = `value`; the decision in words, None when tracking
    is off or lost."""
    def decide(client: Any, run: tracking.Run) -> str:
        producer = tracking.find_producer(client, output)
        found = [] if producer is None else client.search_model_versions(
            f"name = '{name}' and run_id = '{producer.info.run_id}'")
        if not found:
            return (f"{output} as it is now has no registered version of {name} (trained with "
                    "tracking off?): nothing to promote")
        version = found[0]
        key = f"xai.{metric}"
        tags = {key: repr(value), "xai.evaluate_run": run.run_id}
        decision, promoted = _decision(client, name, version, key, metric, value)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
            tags |= {"xai.promoted_on": f"{metric} = {value:.4f}", "xai.promoted_over": promoted}
        for tag, text in {**tags, "xai.promotion": decision}.items():
            client.set_model_version_tag(name, version.version, tag, text)
        run.set_tags({"xai.registered_version": f"{name} version {version.version}: {decision}"})
        return f"{name} version {version.version}: {decision}"

    return run.use_client(decide)


def _decision(client: Any, name: str, version: Any, key: str, metric: str, value: float
              ) -> tuple[str, str]:
    """(the decision in words, the champion it beat: "" when it is not promoted)."""
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    if current is None:
        return f"{CHAMPION}: the first ({metric} = {value:.4f})", "none (the first champion)"
    if str(current) == str(version.version):
        return f"{CHAMPION} already ({metric} = {value:.4f})", ""
    champion = client.get_model_version(name, current)
    differ = [f"{what} {version.tags.get(tag)} vs {champion.tags.get(tag)}"
              for tag, what in COMPARABLE.items()
              if version.tags.get(tag) != champion.tags.get(tag)]
    if differ or key not in champion.tags:
        why = ", ".join(differ) or f"the champion has no {metric}"
        return (f"not compared with the {CHAMPION}, version {current} ({why}): a registered "
                "model serves one kind of input; give this data set a name of its own "
                "(serving.registered_model)"), ""
    best = float(champion.tags[key])
    if value >= best:
        return (f"{CHAMPION}: {metric} = {value:.4f} >= version {current}'s {best:.4f}",
                f"version {current} ({metric} = {best:.4f})")
    return (f"not promoted: {metric} = {value:.4f} < the {CHAMPION}'s (version {current}) "
            f"{best:.4f}"), ""


def request_body(images: torch.Tensor) -> str:
    """The /invocations body for images N x C x H x W (uint8 or floats in [0, 1]): exact float32
    values, so the served answer is the in-process one to the bit."""
    return json.dumps({"inputs": to_unit(images).float().cpu().numpy().tolist()})


def main(argv: list[str] | None = None) -> None:
    """`request`: print the JSON body that asks a served explainer about prepared test images."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    request = commands.add_parser("request", help="the /invocations body for test images")
    request.add_argument("--data", default="data/prepared/images.pt", help="prepared image set")
    request.add_argument("--index", type=int, default=0, help="the first test image")
    request.add_argument("--count", type=int, default=1, help="how many test images")
    args = parser.parse_args(argv)
    test = load_dataset(args.data).test
    if not 0 <= args.index < args.index + args.count <= len(test):
        parser.error(f"--index {args.index} --count {args.count} is out of range: the test set "
                     f"holds {len(test)} images")
    sys.stdout.write(request_body(test.x[args.index:args.index + args.count]) + "\n")


if __name__ == "__main__":
    main()
