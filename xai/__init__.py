"""xai: train models and explain their decisions (invertible boundaries, VIBI), reproducibly.

The public API (see the README's "Python API"):

- `VIBI(blackbox, k=..., beta=...).fit(x_train).attribute(x)`: VIBI for any model;
- the explanation methods of the evaluation, one call shape each (`xai.attribution`).
"""

from xai.api import VIBI
from xai.attribution import (GradientSaliency, GradientShapAttribution, InputTimesGradient,
                             IntegratedGradientsAttribution, KernelShapAttribution,
                             LimeAttribution, Occlusion, RandomChunks, SmoothGrad)

__all__ = ["VIBI", "GradientSaliency", "GradientShapAttribution", "InputTimesGradient",
           "IntegratedGradientsAttribution", "KernelShapAttribution", "LimeAttribution",
           "Occlusion", "RandomChunks", "SmoothGrad"]
