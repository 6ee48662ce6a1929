"""DVC stage `train_judge`: the neutral judge every method's fidelity is measured with (EVAL-X)."""

from __future__ import annotations

import argparse

import torch

from xai.chunks import num_chunks
from xai.data.prepared import load_dataset
from xai.devices import select_device, use_bf16
from xai.io import check_writable, save_json, transaction
from xai.models.blackbox import UserModel, load_blackbox, load_probabilities
from xai.models.explainers import CHUNK_SIZE
from xai.models.judge import Judge, agreement, save_judge
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.train.judge import train_judge
from xai.train.loop import History, seed_everything

REPORTED_SHARES = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # budgets reported, share of chunks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared image set (.pt)")
    parser.add_argument("--probs", required=True, help="the black box's probabilities (.pt)")
    parser.add_argument("--blackbox", required=True, help="the black box (.pt): architecture, init")
    parser.add_argument("--model", required=True, help="output: the judge")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    parser.add_argument("--timings", required=True, help="output: wall-clock figures JSON")
    parser.add_argument("--plots", required=True, help="output: per-epoch CSV")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.model, args.metrics, args.timings, args.plots)
    device = select_device(cfg.device)
    chunk = CHUNK_SIZE[cfg.vibi.explainer_type]
    params = {"seed": cfg.seed, "device": str(device), "chunk": chunk,
              "road_noise_std": cfg.road_noise_std, **flatten(cfg.judge, "judge")}
    with tracking.stage_run(cfg, "train_judge", params) as run, transaction() as outputs:
        blackbox = load_blackbox(args.blackbox, device)
        generator = seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        probs = load_probabilities(args.probs, device)
        judge = Judge(blackbox.architecture, chunk, cfg.judge.mirror).to(device)
        # the user's black box has other weights than the judge's architecture: from scratch
        start = cfg.judge.start_from_blackbox and not isinstance(blackbox, UserModel)
        if start:
            judge.start_from(blackbox)
        run.log_params({"judge.started_from_blackbox": start})
        history = History(run)
        train_judge(judge, data.train.x, probs["train"], cfg.judge, generator, history,
                    val=(data.val.x, probs["val"]), noise_std=cfg.road_noise_std)
        reference = probs["test"].argmax(1)
        amp = use_bf16(cfg.judge.precision, device)
        d = num_chunks(tuple(data.input_shape), chunk)
        metrics: dict[str, float] = {"num_chunks": d}
        for imputed in (False, True):
            suffix = "_imputed" if imputed else ""
            for b in sorted({round(share * d) for share in REPORTED_SHARES}):
                g = torch.Generator(device=device).manual_seed(cfg.seed + b)
                metrics[f"test_agreement{suffix}_k{b}"] = agreement(
                    judge, data.test.x, reference, g, b, imputed, cfg.road_noise_std, amp=amp
                ).float().mean().item()
        save_judge(judge, args.model)
        history.save(args.plots)
        timings = {"train_seconds": round(history.elapsed, 2)}
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_headline(metrics)
        run.log_metrics(timings)
        run.tag_outputs(args.model)
    print("train_judge: test agreement with the black box on random chunk subsets: "
          + ", ".join(f"{k.removeprefix('test_agreement_')} {v:.3f}" for k, v in metrics.items()
                      if k.startswith("test_agreement")) + f"; {history.elapsed:.0f} s training")


if __name__ == "__main__":
    cli.run(main, "train_judge")
