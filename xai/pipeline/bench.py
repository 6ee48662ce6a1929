"""Benchmark: each training and inference path at its default shapes against the machine's limit.

    python -m xai.pipeline.bench [--params params.yaml] [--set vibi.precision=fp32 ...]
        [--shape 3 32 32] [--out bench.json] [--seconds 4] [--only vibi]

First measures the ceiling (fp32 matmul GFLOP/s, bf16 too where supported), then runs a fixed
number of steps of every case on synthetic inputs of the configured shapes and reports images/s,
FLOPs per image (counted with `torch.utils.flop_counter`), achieved GFLOP/s, its share of the
ceiling of the precision the case runs in, and the peak memory the case added. On a CPU it also
profiles a few steps: the share of the ceiling the convolutions and matrix products reach on their
own (the case's FLOPs over the time inside them) bounds what any speed-up of the rest (fusion,
fewer copies) can give, and the part of the step they take says how much rest there is. `--set`
changes params as `dvc exp run -S` does (for example every `precision` to fp32, what a CPU
without native bf16 runs); `--shape` times another image shape than the prepared data's. The
JSON records the host: its CPU and the instruction sets the matmul ceiling depends on.
"""

from __future__ import annotations

import argparse
import functools
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from xai.devices import (
    CONV_LAYOUT,
    channels_last_copy,
    cpu_flags,
    fast_bf16,
    select_device,
    use_bf16,
)
from xai.io import save_json
from xai.pipeline.config import IMAGE_SHAPES, Config, load_config
from xai.tensors import autocast
from xai.train.loop import cpu_threads

MATMUL_SIDES = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class Case:
    """One benchmarked path: `step()` processes `batch` images (`amp`: under bf16 autocast).

    `flop_step`, when given, is counted instead of `step`: the same arithmetic in a form torch's
    FLOP counter can follow (it cannot follow `torch.autograd.grad`, which Captum uses).
    """

    name: str
    step: Callable[[], object]
    batch: int
    amp: bool
    flop_step: Callable[[], object] | None = None


@dataclass(frozen=True)
class Result:
    name: str
    batch: int
    precision: str
    images_per_second: float
    mflop_per_image: float
    gflops: float
    share_of_ceiling: float
    peak_memory_mb: float
    #: the share of the ceiling the step's convolutions and matrix products reach on their own
    #: (its FLOPs over the time spent inside them): the most that speeding up everything else
    #: could give; None where not measured (a GPU, or no FLOPs)
    gemm_share_of_ceiling: float | None = None
    #: the part of a step's time spent inside its convolutions and matrix products
    gemm_time_share: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, seconds: float, min_reps: int = 3
           ) -> tuple[int, float]:
    """Run `fn` after one warm-up call until `seconds` have passed; (repetitions, elapsed)."""
    fn()
    _sync(device)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    _sync(device)
    return reps, time.perf_counter() - start


def matmul_ceiling(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Best sustained GFLOP/s of square matmuls in `dtype`, growing the side while it pays.

    Sizes stop growing once one product takes over 50 ms, so a precision the hardware lacks
    (CPU bf16 without AVX512-BF16/AMX runs near 1 GFLOP/s) cannot stall the benchmark.
    """
    best = 0.0
    for side in MATMUL_SIDES:
        a = torch.randn(side, side, device=device).to(dtype)
        b = torch.randn(side, side, device=device).to(dtype)
        reps, elapsed = _timed(lambda: a @ b, device, seconds / len(MATMUL_SIDES), min_reps=1)
        best = max(best, 2 * side ** 3 * reps / elapsed / 1e9)
        if elapsed / reps > 0.05:
            break
    return best


class PeakMemory:
    """Peak memory added while the block runs: the CUDA allocator's peak, or on a CPU the
    process's resident set at its highest (Linux: the kernel's high-water mark, reset on entry;
    elsewhere sampled every 5 ms). Memory freed earlier but kept by the C allocator is reused
    without growing the resident set, so on a CPU this can undercount."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._proc = psutil.Process()
        self._thread = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._base = self._top = self._proc.memory_info().rss
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._top = max(self._top, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            top = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            status = Path("/proc/self/status").read_text()
            top = int(status.split("VmHWM:")[1].split()[0]) * 1024
        else:
            self._stop.set()
            self._thread.join()
            top = self._top
        self.peak_mb = (top - self._base) / 2 ** 20


_MATMULS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul"})


def _is_gemm(op: str) -> bool:
    """Whether a profiler event is one of the operators torch's FLOP counter counts: a
    convolution (forward or backward, any backend) or a matrix product."""
    return op.startswith("aten::") and ("conv" in op or op[6:] in _MATMULS)


def gemm_seconds(step: Callable[[], object], reps: int = 3) -> float:
    """Wall seconds per call of `step` spent inside its convolutions and matrix products (the
    profiler's self time of those operators, CPU)."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    micros = sum(e.self_cpu_time_total for e in prof.key_averages() if _is_gemm(e.key))
    return micros / 1e6 / reps


def run_case(case: Case, device: torch.device, ceilings: dict[str, float], seconds: float
             ) -> Result:
    """Count one step's FLOPs, time steps for about `seconds`, then (CPU) profile a few to
    find the time spent inside the convolutions and matrix products."""
    with FlopCounterMode(display=False) as counter:
        (case.flop_step or case.step)()
    flops = counter.get_total_flops()
    with PeakMemory(device) as memory:
        reps, elapsed = _timed(case.step, device, seconds)
    precision = "bf16" if case.amp else "fp32"
    gflops = flops * reps / elapsed / 1e9
    gemm_share = gemm_time = None
    if device.type == "cpu" and flops:
        inside = gemm_seconds(case.step)
        gemm_share = flops / max(inside, 1e-9) / 1e9 / ceilings[precision]
        gemm_time = inside / (elapsed / reps)
    return Result(case.name, case.batch, precision, case.batch * reps / elapsed,
                  flops / case.batch / 1e6, gflops, gflops / ceilings[precision],
                  memory.peak_mb, gemm_share, gemm_time)


# ----------------------------------------------------------------------------- cases


def blackbox_cases(cfg: Config, device: torch.device, shape: tuple[int, int, int] | None = None,
                   scale: int = 1) -> list[Case]:
    """The black box's training step and its batched inference, at the configured shapes (or
    `shape`; `scale` multiplies the fixed batches of the inference cases)."""
    from xai.models.blackbox import Architecture, architecture
    from xai.train.blackbox import make_optimizer

    shape = shape or _input_shape(cfg)
    spec: Architecture = architecture(cfg.blackbox, shape, 10)
    model = spec.build().to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.blackbox, model)
    bb = cfg.blackbox
    amp = use_bf16(bb.precision, device)
    x = torch.rand(bb.batch_size, *shape, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bb.batch_size,), device=device)

    def train_step() -> None:
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xe = torch.rand(bb.eval_batch_size * scale, *shape, device=device)

    @torch.inference_mode()
    def infer() -> None:
        model.eval()
        model(xe)
        model.train()

    return [Case(f"blackbox train step ({spec.arch})", train_step, bb.batch_size, amp),
            Case(f"blackbox inference ({spec.arch})", infer, len(xe), False)]


def _input_shape(cfg: Config) -> tuple[int, int, int]:
    """The image shape of the configured data set (from the prepared file for `folder` data)."""
    if cfg.data.dataset in IMAGE_SHAPES:
        return IMAGE_SHAPES[cfg.data.dataset]
    return _prepared_shape()


@functools.cache
def _prepared_shape() -> tuple[int, int, int]:
    """The prepared image set's shape, read once for all cases."""
    from xai.data.prepared import load_dataset

    return load_dataset("data/prepared/images.pt").input_shape  # type: ignore[return-value]


def vibi_cases(cfg: Config, device: torch.device, shape: tuple[int, int, int] | None = None,
               scale: int = 1) -> list[Case]:
    """VIBI's training step as the stage runs it (`vibi.objective`: the frozen black box or the
    approximator predicts from relaxed k-hot masks) and its test-time pass (top-k masks)."""
    from xai.models.blackbox import architecture
    from xai.models.vibi import VibiModel, VibiSpec
    from xai.train.vibi_objective import TrainingObjective

    v = cfg.vibi
    c, h, w = shape or _input_shape(cfg)
    amp = use_bf16(v.precision, device)
    model = VibiModel(VibiSpec(v.explainer_type, v.xpl_channels, v.width_multiplier, c, h, w, 10, v.k)).to(
        device, memory_format=CONV_LAYOUT)
    blackbox = architecture(cfg.blackbox, (c, h, w), 10).build().to(
        device, memory_format=CONV_LAYOUT).eval().requires_grad_(False)
    objective = TrainingObjective(model, v.beta, v.num_samples, v.objective, blackbox)
    opt = torch.optim.Adam(model.parameters(), lr=v.lr)
    x = torch.rand(v.batch_size, c, h, w, device=device).contiguous(memory_format=CONV_LAYOUT)
    p = torch.softmax(torch.randn(v.batch_size, 10, device=device), -1)
    noise = torch.Generator(device=device).manual_seed(0)

    def train_step() -> None:
        with autocast(device, amp):
            loss = objective(x, p, v.tau_start, False, noise, None)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xe = torch.rand(1000 * scale, c, h, w, device=device).contiguous(memory_format=CONV_LAYOUT)

    @torch.inference_mode()
    def infer() -> None:
        model.eval()
        with autocast(device, amp):
            model.explain(xe)
        model.train()

    name = f"{v.explainer_type} x{v.width_multiplier:g}"
    return [Case(f"vibi train step ({name}, S={v.num_samples}, {v.objective})", train_step,
                 v.batch_size, amp),
            Case(f"vibi explain ({name})", infer, len(xe), amp)]


def invertible_cases(cfg: Config, device: torch.device, shape: tuple[int, int, int] | None = None,
                     scale: int = 1) -> list[Case]:
    """The invertible classifiers' training steps (toy restarts together; image net, on the
    stage's `threads`) and the image projection + importance used by render and evaluate."""
    from xai.explain.boundary import importance, project
    from xai.models.invertible import image_classifier, toy_classifier
    from xai.train.invertible import ToyRestarts, hybrid_loss

    inv = cfg.invertible
    shape = shape or _input_shape(cfg)
    net = image_classifier(shape, 10, inv.image.downsample, inv.image.blocks, inv.image.hidden,
                           inv.image.kernel, inv.image.separation).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=inv.image.lr)
    x = torch.rand(inv.image.batch_size, *shape, device=device)
    y = torch.randint(0, 10, (inv.image.batch_size,), device=device)

    def image_step() -> None:
        with cpu_threads(inv.image.threads):
            loss = hybrid_loss(net.log_joint(x), y, x[0].numel(), inv.image.nll_weight)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t = inv.toy
    restarts = ToyRestarts([toy_classifier(2, 2, t.blocks, t.hidden).to(device)
                            for _ in range(t.restarts)])
    toy_opt = torch.optim.SGD(restarts.params.values(), lr=t.lr, momentum=t.momentum)
    xt = torch.randn(t.restarts, t.batch_size, 2, device=device)
    yt = torch.randint(0, 2, (t.restarts, t.batch_size), device=device)

    def toy_step() -> None:
        with cpu_threads(1):
            loss, _ = restarts.losses(xt, yt)
            toy_opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            toy_opt.step()

    xe = torch.rand(256 * scale, *shape, device=device)

    def explain() -> None:
        net.eval()
        importance(net, project(net, xe))
        net.train()

    threads = inv.image.threads or torch.get_num_threads()
    return [Case(f"invertible toy step ({t.restarts} restarts)", toy_step,
                 t.restarts * t.batch_size, False),
            Case(f"invertible image train step ({threads} thr)", image_step,
                 inv.image.batch_size, False),
            Case("invertible projection + importance", explain, len(xe), False)]


def evaluation_cases(cfg: Config, device: torch.device, shape: tuple[int, int, int] | None = None,
                     scale: int = 1) -> list[Case]:
    """The evaluation's costliest path, integrated gradients on the black box, and ROAD's
    imputation of half of every image's pixels (its deletion and insertion curves' fill)."""
    from xai.data.imputation import linear_impute
    from xai.explain.attribution import IntegratedGradients
    from xai.models.blackbox import architecture

    shape = shape or _input_shape(cfg)
    model = architecture(cfg.blackbox, shape, 10).build().to(device).eval()
    steps = cfg.evaluate.ig_steps
    ig = IntegratedGradients(channels_last_copy(model), steps=steps)  # as the stage runs it
    x = torch.rand(64 * scale, *shape, device=device)
    target = torch.randint(0, 10, (len(x),), device=device)
    xr = torch.rand(256 * scale, *shape, device=device)
    keep = torch.rand(len(xr), 1, *shape[1:], device=device) < 0.5

    def same_arithmetic() -> None:  # IG: `steps` forward + backward passes on scaled inputs
        scaled = (x.repeat(steps, 1, 1, 1) * 0.5).requires_grad_(True)
        out = model(scaled).gather(1, target.repeat(steps)[:, None]).sum()
        torch.autograd.backward(out, inputs=[scaled])

    return [Case(f"evaluate integrated gradients ({steps} steps)",
                 lambda: ig.attribute(x, target), len(x), False, same_arithmetic),
            Case("evaluate ROAD imputation (half removed)", lambda: linear_impute(xr, keep),
                 len(xr), False)]


CASES: list[Callable[..., list[Case]]] = [
    blackbox_cases, invertible_cases, vibi_cases, evaluation_cases]


# ----------------------------------------------------------------------------- report


def render_table(ceilings: dict[str, float], results: list[Result]) -> str:
    lines = ["ceiling: " + ", ".join(f"{k} matmul {v:.0f} GFLOP/s" for k, v in ceilings.items()),
             "",
             f"{'case':<44} {'batch':>6} {'prec':>5} {'img/s':>10} {'MFLOP/img':>10} "
             f"{'GFLOP/s':>8} {'ceiling':>8} {'mem MB':>8} {'GEMMs':>6} {'of time':>8}"]
    for r in results:
        lines.append(f"{r.name:<44} {r.batch:>6} {r.precision:>5} {r.images_per_second:>10.0f} "
                     f"{r.mflop_per_image:>10.2f} {r.gflops:>8.1f} {r.share_of_ceiling:>7.0%} "
                     f"{r.peak_memory_mb:>8.0f} {percent(r.gemm_share_of_ceiling):>6} "
                     f"{percent(r.gemm_time_share):>8}")
    lines += ["", "GEMMs: the share of the ceiling the convolutions and matrix products reach on "
              "their own (the bound on the step); of time: the part of the step inside them"]
    return "\n".join(lines)


def percent(share: float | None) -> str:
    """A share as a percentage, or a dash where the run did not measure it (the bench table and
    the docs' bench blocks)."""
    return "-" if share is None else f"{share:.0%}"


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def host() -> dict[str, object]:
    """This machine's CPU model, core count and which of `SIMD_FLAGS` it has (Linux)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": name, "cores": psutil.cpu_count(), "flags": [f for f in SIMD_FLAGS if f in flags]}


def host_label(host: dict) -> str:
    """A run's host as the docs' tables name it: CPU, cores and the instruction sets recorded."""
    flags = ", ".join(host.get("flags", [])) or "flags not recorded"
    return f"{host['cpu']}, {host['cores']} cores ({flags})"


def one_host_label(runs: list[dict], name: str) -> str:
    """The host that ran every one of `runs` (of file `name`), as `host_label` names it; runs
    from several kinds of host cannot be read as one host's spread."""
    hosts = {host_label(run["host"]) for run in runs}
    if len(hosts) != 1:
        raise ValueError(f"the runs of {name} come from more than one host: {hosts}")
    return hosts.pop()


def markdown(run: dict, title: str) -> str:
    """A bench run (`--out`'s file) as a table: each case's speed and share of the ceiling, and
    where profiled, its GEMMs' share alone and their share of the step's time."""
    ceiling = ", ".join(f"{k} {v:.0f}" for k, v in run["ceiling_gflops"].items())
    gemms = any(c.get("gemm_share_of_ceiling") is not None for c in run["cases"])
    lines = [f"{title}; {run['device']}, {run['threads']} threads; matmul ceiling GFLOP/s: "
             f"{ceiling}:", "",
             "| case | batch | precision | img/s | MFLOP/img | GFLOP/s | of ceiling |"
             + (" its GEMMs alone | time in GEMMs |" if gemms else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if gemms else "")]
    lines += [f"| {c['name']} | {c['batch']} | {c['precision']} | {c['images_per_second']:.0f} "
              f"| {c['mflop_per_image']:.3g} | {c['gflops']:.1f} | {c['share_of_ceiling']:.0%} |"
              + (f" {percent(c.get('gemm_share_of_ceiling'))} | "
                 f"{percent(c.get('gemm_time_share'))} |" if gemms else "")
              for c in run["cases"]]
    return "\n".join(lines)


def fp32_markdown(before: dict, after: dict) -> str:
    """The bench with `XAI_CPU_BF16=0` before and after a change: each case's share of the fp32
    ceiling, with the host's instruction sets."""
    shares = {c["name"]: c["share_of_ceiling"] for c in before["cases"]}
    lines = [f"{host_label(after['host'])}, {after['threads']} threads; fp32 matmul ceiling "
             f"{after['ceiling_gflops']['fp32']:.0f} GFLOP/s:", "",
             "| case | batch | img/s | GFLOP/s | of ceiling before | of ceiling after | "
             "its GEMMs alone | time in GEMMs |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['batch']} | {c['images_per_second']:.0f} | {c['gflops']:.1f} "
              f"| {shares[c['name']]:.0%} | {c['share_of_ceiling']:.0%} | "
              f"{percent(c.get('gemm_share_of_ceiling'))} | {percent(c.get('gemm_time_share'))} |"
              for c in after["cases"] if c["mflop_per_image"]]  # no counted FLOPs: no share
    return "\n".join(lines)


def repeats_markdown(runs: list[dict], name: str) -> str:
    """One bench repeated on one host (the runs of file `name`): each case's share of the fp32
    ceiling and its GEMMs' share, run by run, so the spread between runs is read beside them."""
    ceilings = " / ".join(f"{run['ceiling_gflops']['fp32']:.0f}" for run in runs)
    lines = [f"{one_host_label(runs, name)}, {runs[0]['threads']} threads; fp32 matmul ceiling "
             f"{ceilings} GFLOP/s in runs {' / '.join(str(i) for i in range(1, len(runs) + 1))}:",
             "", "| case | batch | of ceiling, run by run | its GEMMs alone, run by run |",
             "|---|---|---|---|"]
    for i, case in enumerate(runs[0]["cases"]):
        if case["mflop_per_image"] == 0:
            continue  # no counted FLOPs: no share of a ceiling
        cases = [run["cases"][i] for run in runs]
        lines.append(f"| {case['name']} | {case['batch']} | "
                     f"{' / '.join(percent(c['share_of_ceiling']) for c in cases)} | "
                     f"{' / '.join(percent(c.get('gemm_share_of_ceiling')) for c in cases)} |")
    return "\n".join(lines)


def key_value(text: str) -> tuple[str, object]:
    """`key=value` with the value read as YAML (`vibi.k=8`, `blackbox.precision=fp32`)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per case")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--set", type=key_value, nargs="*", default=[], metavar="KEY=VALUE",
                        help="params changed for this run, as dvc exp run -S takes them")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="image shape (default: the configured data set's)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params, dict(args.set))
    shape = tuple(args.shape) if args.shape else None
    device = select_device(cfg.device)
    torch.manual_seed(0)
    ceilings = {"fp32": matmul_ceiling(device, torch.float32, args.seconds),
                "bf16": matmul_ceiling(device, torch.bfloat16, args.seconds)}
    results = [run_case(case, device, ceilings, args.seconds)
               for build in CASES for case in build(cfg, device, shape=shape)
               if args.only in case.name]
    print(f"device: {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, native bf16: {fast_bf16(device)}), "
          f"torch {torch.__version__}")
    print(render_table(ceilings, results))
    if args.out:
        save_json({"device": str(device), "host": host(), "native_bf16": fast_bf16(device),
                   "threads": torch.get_num_threads(),
                   "settings": dict(args.set), "shape": args.shape, "ceiling_gflops": ceilings,
                   "cases": [asdict(r) for r in results]}, args.out)


if __name__ == "__main__":
    main()
