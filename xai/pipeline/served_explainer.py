"""The code of the explainer's MLflow Model ("models from code"): MLflow copies this file into every
model `xai.pipeline.serving` logs and runs it where the model is loaded or served, so it imports
torch, numpy and mlflow only, never `xai`, and the model runs without this repository.

The model is one program (`xai.explain.vibi.export`: the black box and its VIBI explainer) and a
config: `input_shape`, `max_batch`, the class names, `threads` (torch's threads, which loading
the model sets for its whole process: one per request suits a server). `predict` takes images
N x C x H x W, floats in [0, 1] (MLflow's input schema is left out, so that every refusal comes
from here and names its problem), refuses with a 400 what the program must not see (not numbers,
an empty batch, another shape or channel count, more than `max_batch` images, NaN or infinite
values, values outside [0, 1]) and answers one record per image: the black box's class, its
label and probabilities, the k chunks the explainer keeps (most probable first), their pixel mask
(C x H rows of "0" and "1") and p(z | x) on the chunk grid.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException


def load_program(path: str) -> Any:
    """The exported program: TorchScript (`.pt`) or a torch.export program (`.pt2`)."""
    if path.endswith(".pt"):
        return torch.jit.load(path, map_location="cpu").eval()
    return torch.export.load(path).module()


def bad_request(message: str) -> MlflowException:
    """A 400 answer (MLflow's scoring server maps INVALID_PARAMETER_VALUE to it)."""
    return MlflowException.invalid_parameter_value(message)


def images(model_input: Any, shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    """The request's images as float32 N x C x H x W, or a 400 naming what is wrong with them.
    Rows of C * H * W pixels (a CSV table, one image per row) are accepted too."""
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"images must be numbers (floats in [0, 1]): {exc}") from None
    c, h, w = shape
    expected = f"N x {c} x {h} x {w} (or N rows of {c * h * w} pixels)"
    if x.ndim == 2 and x.shape[1] == c * h * w:
        x = x.reshape(-1, c, h, w)
    if x.size == 0:
        raise bad_request(f"the batch is empty: send at least one image, {expected}")
    if x.ndim == 4 and x.shape[2:] == (h, w) and x.shape[1] != c:
        raise bad_request(f"images of {x.shape[1]} channels: the black box takes {c} "
                          f"({expected})")
    if x.shape[1:] != shape:
        raise bad_request(f"images must be {expected}; got shape {' x '.join(map(str, x.shape))}")
    if len(x) > max_batch:
        raise bad_request(f"the batch holds {len(x)} images, over this model's limit of "
                          f"{max_batch} per request: send it in parts")
    finite = np.isfinite(x)
    if not finite.all():
        image = int(np.argmin(finite.reshape(len(x), -1).all(1)))
        raise bad_request(f"{int(finite.size - finite.sum())} values are NaN or infinite (the "
                          f"first in image {image}): pixels must be finite floats in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        image = int(np.argmax(((x < 0) | (x > 1)).reshape(len(x), -1).any(1)))
        raise bad_request(f"values must lie in [0, 1] (pixels / 255); got values from {low:g} to "
                          f"{high:g} (the first out of range in image {image})")
    return np.ascontiguousarray(x)


class ExplainerModel(mlflow.pyfunc.PythonModel):
    """The black box's prediction and VIBI's explanation of it, per image."""

    # `predict` checks its input itself (`images`): MLflow's validation from type hints, which
    # it asks for with a warning wherever the model is loaded, is skipped (as for its ChatModel)
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        config = context.model_config
        self.program = load_program(context.artifacts["explainer"])
        self.shape = tuple(config["input_shape"])
        self.max_batch = int(config["max_batch"])
        self.classes = list(config["classes"])
        # one thread per request: requests run side by side (the server's thread pool, its
        # workers), and threads that wait for a busy core slow a small batch many times over
        torch.set_num_threads(int(config["threads"]))

    # no type hints on `predict`'s arguments: MLflow would read them as the model's signature
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """One record per image: class, label, probabilities, chunks, mask, p_z."""
        x = images(model_input, self.shape, self.max_batch)
        with torch.inference_mode():
            label, probs, chunks, mask, p_z = self.program(torch.from_numpy(x))
        columns = zip(label.tolist(), probs.tolist(), chunks.tolist(), mask_rows(mask),
                      p_z.tolist())
        return [{"class": c, "label": self.classes[c], "probabilities": p, "chunks": k,
                 "mask": m, "p_z": z} for c, p, k, m, z in columns]


def mask_rows(mask: torch.Tensor) -> list[list[list[str]]]:
    """Boolean masks N x C x H x W as rows of "0" and "1" (N x C x H strings of W): a JSON answer
    of a string per row instead of a number per pixel is several times faster to write, and
    shows the kept chunks when printed."""
    n, c, h, w = mask.shape
    text = (mask.to(torch.uint8) + ord("0")).numpy().tobytes().decode("ascii")
    return [[[text[start + row * w:start + (row + 1) * w] for row in range(h)]
             for start in range(image * c * h * w, (image + 1) * c * h * w, h * w)]
            for image in range(n)]


mlflow.models.set_model(ExplainerModel())
