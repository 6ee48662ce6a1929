"""VIBI / L2X training variants on MNIST, measured on validation images (never test).

    python experiments/vibi_variants.py experiments/vibi_variants.json [NAME ...] [--seeds 0 1 2]

Needs `dvc repro train_blackbox` first (the prepared data and the black box; `--data`, `--probs`,
`--blackbox` and `--params` point elsewhere, e.g. at a CIFAR-10 run). Every variant is
`base` with its overrides, trained from scratch; one JSON line per (variant, seed) goes to stdout:
the black box's post-hoc accuracy on the top-k chunks, the pair's own approximator's agreement
(the published measure; for objective `blackbox` the approximator is the black box), the
cross-fitted encoding accuracy of the masks (random masks: about 0.11) and mean KL. The committed
`experiments/vibi_variants.jsonl` was measured on one H100 (`gpu_seconds`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.models.blackbox import load_blackbox, load_probabilities  # noqa: E402
from xai.pipeline.config import load_config  # noqa: E402
from xai.data.prepared import load_dataset  # noqa: E402
from xai.evaluation.encoding import encoding_correct  # noqa: E402
from xai.pipeline.tracking import NullRun  # noqa: E402
from xai.train.loop import History  # noqa: E402
from xai.explain.vibi import Vibi  # noqa: E402
from xai.train.vibi import Targets, explain, spec_for, summarize, train  # noqa: E402

ENCODING_IMAGES = 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", type=Path)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared/images.pt")
    parser.add_argument("--probs", default="models/blackbox_probs.pt")
    parser.add_argument("--blackbox", default="models/blackbox.pt")
    args = parser.parse_args()
    spec = json.loads(args.variants.read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.params, {"tracking.enabled": False})
    data = load_dataset(args.data, device)
    probs = load_probabilities(args.probs, device)
    blackbox = load_blackbox(args.blackbox, device)
    for name in args.names or list(spec["variants"]):
        overrides = spec["variants"][name]
        settings = replace(cfg.vibi, **{**spec["base"], **overrides}, resume=False,
                           jump_start=False)
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = Vibi(spec_for(settings, data)).to(device)
            started = time.perf_counter()
            train(model, settings, Targets(data.train.x, probs["train"]),
                  Targets(data.val.x, probs["val"]), seed=seed, history=History(NullRun()),
                  show_progress=False, blackbox=blackbox)
            seconds = time.perf_counter() - started
            own = blackbox if settings.objective == "blackbox" else None
            result = explain(model, data.val.x, blackbox, approximator=own)
            measures = summarize(result, probs["val"])
            predicted = probs["val"].argmax(1)[:ENCODING_IMAGES].cpu()
            encoding = encoding_correct(result.top_k[:ENCODING_IMAGES].cpu(), predicted,
                                        probs["val"].shape[1]).float().mean().item()
            print(json.dumps({"variant": name, "settings": overrides, "seed": seed,
                              "posthoc_accuracy": round(measures["posthoc_accuracy"], 4),
                              "approximator_fidelity": round(measures["fidelity"], 4),
                              "encoding": round(encoding, 4),
                              "mean_kl": round(measures["mean_kl"], 4),
                              "gpu_seconds" if device.type == "cuda" else "cpu_seconds":
                              round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
