"""VIBI: the sampler, masks, KL, loss, explainer shapes, training on a tiny problem, resume."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from xai.data.imputation import smooth_fill
from xai.data.prepared import Split
from xai.errors import CheckpointError, ConfigError
from xai.io import save_torch
from xai.models.explainers import CHUNK_SIZE, StridedPointwise, build_explainer
from xai.models.vibi import (
    VibiModel,
    VibiSpec,
    explain_split,
    gumbel_softmax_draws,
    hard_top_k,
    kl_to_uniform,
    load_vibi,
    relaxed_k_hot,
    save_vibi,
)
from xai.pipeline.config import load_config, param_error
from xai.tensors import to_unit
from xai.train import vibi as vibi_training
from xai.train.loop import History
from xai.train.vibi import summarize, train
from xai.train.vibi_objective import soft_cross_entropy, vibi_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("tau", [0.05, 1.0, 10.0])
def test_relaxed_k_hot_sums_and_keeps_at_most_k_chunks(tau):
    logits = torch.randn(8, 49) * 3
    g = torch.Generator().manual_seed(0)
    draws = gumbel_softmax_draws(logits, k=4, tau=tau, num_samples=3, generator=g)
    assert draws.shape == (8, 3, 4, 49)
    torch.testing.assert_close(draws.sum(-1), torch.ones(8, 3, 4))
    mask = draws.amax(dim=2)
    assert ((mask >= 0) & (mask <= 1)).all()
    total = mask.sum(-1)
    assert (total >= 1 - 1e-5).all() and (total <= 4 + 1e-5).all()
    assert ((mask > 0.5).sum(-1) <= 4).all()  # each draw puts more than 1/2 on one chunk at most


@pytest.mark.parametrize("num_samples", [1, 3])
def test_relaxed_k_hot_gradient_is_that_of_the_max_of_the_draws(num_samples):
    """The hand-written backward equals autograd's through softmax and amax over the draws."""
    logits = torch.randn(6, 49, requires_grad=True)
    upstream = torch.randn(6, num_samples, 49)
    mask = relaxed_k_hot(logits, 4, 0.7, num_samples, torch.Generator().manual_seed(3))
    reference = gumbel_softmax_draws(logits, 4, 0.7, num_samples,
                                     torch.Generator().manual_seed(3)).amax(dim=2)
    torch.testing.assert_close(mask, reference, rtol=0, atol=0)
    ours, = torch.autograd.grad((mask * upstream).sum(), logits)
    theirs, = torch.autograd.grad((reference * upstream).sum(), logits)
    torch.testing.assert_close(ours, theirs)


def test_relaxed_k_hot_tends_to_a_sample_of_at_most_k_chunks():
    logits = torch.randn(64, 49)
    mask = relaxed_k_hot(logits, k=4, tau=1e-3, num_samples=2,
                         generator=torch.Generator().manual_seed(1))
    hard = mask > 0.5
    assert ((mask < 1e-3) | (mask > 1 - 1e-3)).float().mean() > 0.99
    on = hard.sum(-1)
    assert (on >= 1).all() and (on <= 4).all() and (on == 4).float().mean() > 0.5


def test_relaxed_k_hot_samples_follow_the_distribution():
    # one chunk at probability 0.5, the other 9 share the rest: a single draw picks it half the time
    logits = torch.tensor([[math.log(9.0)] + [0.0] * 9])
    draws = gumbel_softmax_draws(logits.expand(4000, -1), k=1, tau=1e-3,
                                 generator=torch.Generator().manual_seed(2))
    share = (draws[:, 0, 0].argmax(-1) == 0).float().mean().item()
    assert abs(share - 0.5) < 0.04


def test_hard_top_k_has_exactly_k_at_the_largest_logits():
    logits = torch.randn(16, 49)
    mask = hard_top_k(logits, 4)
    assert (mask.sum(-1) == 4).all()
    kept_min = torch.where(mask.bool(), logits, torch.inf).amin(-1)
    dropped_max = torch.where(mask.bool(), -torch.inf, logits).amax(-1)
    assert (kept_min > dropped_max).all()


def test_kl_to_uniform_of_uniform_is_zero_and_of_one_hot_is_log_d():
    d = 49
    torch.testing.assert_close(kl_to_uniform(torch.zeros(3, d)), torch.zeros(3))
    one_hot = torch.full((2, d), -torch.inf)
    one_hot[:, 5] = 0.0
    torch.testing.assert_close(kl_to_uniform(one_hot), torch.full((2,), math.log(d)))
    peaked = torch.zeros(1, d)
    peaked[0, 0] = 1e4
    torch.testing.assert_close(kl_to_uniform(peaked), torch.tensor([math.log(d)]))


def test_soft_cross_entropy_sums_classes_and_averages_samples_and_batch():
    labels = torch.tensor([0, 3, 2])
    logits = torch.randn(3, 5)
    one_hot = F.one_hot(labels, 5).float()
    torch.testing.assert_close(soft_cross_entropy(one_hot, logits), F.cross_entropy(logits, labels))
    # S identical samples per input give the same value as one: no rescaling of beta by S or K
    repeated = logits[:, None].expand(3, 7, 5)
    torch.testing.assert_close(soft_cross_entropy(one_hot, repeated), F.cross_entropy(logits, labels))
    p = torch.softmax(torch.randn(3, 5), -1)
    expected = -(p * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(p, logits), expected)


def test_loss_is_cross_entropy_plus_beta_kl():
    p = torch.softmax(torch.randn(4, 10), -1)
    approx = torch.randn(4, 2, 10)
    explainer = torch.randn(4, 49)
    loss, ce, kl = vibi_loss(p, approx, explainer, beta=0.3)
    torch.testing.assert_close(ce, soft_cross_entropy(p, approx))
    torch.testing.assert_close(kl, kl_to_uniform(explainer).mean())
    torch.testing.assert_close(loss, ce + 0.3 * kl)
    torch.testing.assert_close(vibi_loss(p, approx, explainer, beta=0.0)[0], ce)  # L2X


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", list(CHUNK_SIZE))
def test_explainer_outputs_the_chunk_grid_its_name_says(name, size):
    chunk = CHUNK_SIZE[name]
    cells = math.ceil(size / chunk)
    for in_channels, xpl_channels in ((1, 1), (3, 1), (3, 3)):
        net = build_explainer(name, in_channels, xpl_channels, width_multiplier=0.25)
        out = net(torch.rand(2, in_channels, size, size))
        assert out.shape == (2, xpl_channels, cells, cells)
    spec = VibiSpec(name, 3, 0.25, 3, size, size, 10, 4)
    assert spec.num_chunks == 3 * cells * cells


@pytest.mark.parametrize("xpl_channels", [1, 3])
def test_pixel_mask_is_the_chunk_mask_up_sampled(xpl_channels):
    spec = VibiSpec("ResNet_8x", xpl_channels, 0.25, 3, 28, 28, 10, 1)  # 4 x 4 chunks, last partial
    model = VibiModel(spec)
    mask = torch.zeros(1, spec.num_chunks)
    mask[0, spec.num_chunks - 1] = 1.0  # last channel, bottom-right chunk: pixels 24..27
    pixels = model.pixel_mask(mask)
    assert pixels.shape == (1, xpl_channels, 28, 28)
    assert pixels.sum() == 16 and pixels[0, -1, 24:, 24:].all()
    x = torch.rand(1, 3, 28, 28)
    kept = model.masked(x, mask)
    assert (kept != 0).sum() == 16 * (3 if xpl_channels == 1 else 1)


# ----------------------------------------------------------------------------- training


def position_task(n: int, seed: int) -> Split:
    """12 x 12 noisy images with one bright 4 x 4 patch; the class is the patch's chunk (of 9).

    Only the right chunk tells the class, so fidelity needs input-dependent explanations.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 9, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    rows, cols = labels // 3 * 4, labels % 3 * 4
    for dr in range(4):
        for dc in range(4):
            x[torch.arange(n), 0, rows + dr, cols + dc] = 1.0
    probs = F.one_hot(labels, 9).float() * 0.9 + 0.01
    return Split((x * 255).round().to(torch.uint8), probs)


def tiny_settings(params, **overrides):
    """The paper's training (its own approximator) unless `objective` is overridden."""
    base = {"vibi.objective": "published", "vibi.explainer_type": "ResNet_4x", "vibi.width_multiplier": 0.5, "vibi.k": 1,
            "vibi.beta": 0.01, "vibi.batch_size": 32, "vibi.epochs": 4, "vibi.warmup_steps": 10,
            "vibi.lr": 0.003, "vibi.num_samples": 2, "vibi.precision": "fp32",
            "vibi.tau_start": 1.0, "vibi.tau_end": 0.2}
    base.update({f"vibi.{k}": v for k, v in overrides.items()})
    return load_config(params(base)).vibi


def tiny_model(settings) -> VibiModel:
    torch.manual_seed(0)
    return VibiModel(VibiSpec(settings.explainer_type, 1, settings.width_multiplier, 1, 12, 12, 9,
                              settings.k, settings.fill))


def test_training_learns_input_dependent_non_uniform_explanations(params):
    settings = tiny_settings(params)
    train_set, val_set = position_task(512, 0), position_task(256, 1)
    model = tiny_model(settings)
    before = summarize(explain_split(model, val_set.x), val_set.y)
    history = History()
    train(model, settings, train_set, val_set, seed=0, history=history, show_progress=False)
    losses = [row["train_ce"] for row in history.rows]
    assert losses[-1] < losses[0] < math.log(9)
    expl = explain_split(model, val_set.x)
    after = summarize(expl, val_set.y)
    assert after["fidelity"] > 0.9 > before["fidelity"] + 0.3
    assert after["mean_kl"] > 0.5  # far from the uniform distribution (log 9 = 2.2 at one-hot)
    chosen = expl.top_k.float().argmax(-1)
    assert len(chosen.unique()) == 9  # the chosen chunk depends on the input ...
    assert (chosen == val_set.y.argmax(-1)).float().mean() > 0.9  # ... and is the patch


def test_bf16_training_runs_channels_last_and_its_weights_load_into_a_plain_model(params):
    """Under bf16 autocast training converts the explainer to channels-last; what it learns
    (and saves) is layout-free: a fresh NCHW model with its weights explains identically."""
    settings = tiny_settings(params, precision="bf16", epochs=1, warmup_steps=2)
    train_set, val_set = position_task(256, 0), position_task(64, 1)
    model = tiny_model(settings)
    train(model, settings, train_set, val_set, seed=0, history=History(), show_progress=False)
    conv = next(m for m in model.explainer.modules()
                if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # not NCHW as well (a 1-channel weight is both)
    plain = tiny_model(settings)
    plain.load_state_dict(model.state_dict())
    x = to_unit(val_set.x)
    with torch.inference_mode():
        torch.testing.assert_close(plain.eval().chunk_logits(x), model.eval().chunk_logits(x))


class PatchReader(nn.Module):
    """A black box for `position_task`: the logits are the 9 chunks' mean brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 30 * F.avg_pool2d(x, 4).flatten(1)


def explained_patches(settings):
    """`PatchReader` explained by a pair trained on `position_task` at `settings`: (the
    explanations of the validation images, their one-hot patch positions)."""
    train_set, val_set = position_task(512, 0), position_task(256, 1)
    blackbox = PatchReader()
    model = tiny_model(settings)
    train(model, settings, train_set, val_set, seed=0, history=History(),
          show_progress=False, blackbox=blackbox)
    return explain_split(model, val_set.x, blackbox), val_set.y


@pytest.mark.parametrize("objective", ["blackbox", "realx"])
def test_black_box_and_realx_objectives_learn_the_chunk_the_black_box_reads(params, objective):
    # realx: the approximator's warm-up on random subsets (2 of 6 epochs), then it is frozen
    settings = tiny_settings(params, objective=objective, epochs=6,
                             warmup_steps=32 if objective == "realx" else 0)
    expl, patches = explained_patches(settings)
    assert summarize(expl, patches)["posthoc_accuracy"] > 0.9
    chosen = expl.top_k.float().argmax(-1)
    assert (chosen == patches.argmax(-1)).float().mean() > 0.9  # the patch


def test_smooth_fill_learns_to_keep_the_chunk_the_black_box_reads(params):
    """With the removed pixels interpolated from the kept ones, one kept chunk would fill the whole
    image with itself; with two, the patch stays the brightest chunk only if it is one of them."""
    settings = tiny_settings(params, objective="blackbox", epochs=6, warmup_steps=0, k=2,
                             fill="smooth", lr=0.01, tau_end=0.1)
    expl, patches = explained_patches(settings)
    assert summarize(expl, patches)["posthoc_accuracy"] > 0.9
    patch = patches.argmax(-1)
    assert expl.top_k[torch.arange(len(patch)), patch].float().mean() > 0.9


def test_interrupted_training_resumes_from_the_saved_step(params, tmp_path, monkeypatch):
    settings = tiny_settings(params, epochs=2, evals_per_epoch=2, resume=True, save_best=False)
    train_set, val_set = position_task(256, 0), position_task(64, 1)
    reference_history = History()
    reference = train(tiny_model(settings), settings, train_set, val_set, seed=0,
                      history=reference_history, show_progress=False)

    checkpoint = tmp_path / "checkpoints" / "vibi.pt"
    stop_at = 11  # mid-epoch 2 (8 steps per epoch), after evaluations at steps 4 and 8
    steps = []
    original = vibi_training.Progress.step

    def step(self, items, **values):
        original(self, items, **values)
        steps.append(values)
        if len(steps) == stop_at:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(vibi_training.Progress, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(settings), settings, train_set, val_set, seed=0,
              history=History(), checkpoint=checkpoint, show_progress=False)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == stop_at and [r["step"] for r in saved["rows"]] == [4, 8]

    steps.clear()
    history = History()
    resumed = train(tiny_model(settings), settings, train_set, val_set, seed=0,
                    history=history, checkpoint=checkpoint, show_progress=False)
    assert len(steps) == 16 - stop_at  # only the remaining steps ran
    assert [row["epoch"] for row in history.rows] == [0.5, 1.0, 1.5, 2.0]
    timing = ("wall_seconds", "images_per_second")
    assert [{k: v for k, v in row.items() if k not in timing} for row in history.rows] == \
        [{k: v for k, v in row.items() if k not in timing} for row in reference_history.rows]
    assert not checkpoint.exists()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


def test_evaluations_are_spread_over_the_epoch_and_end_it():
    assert vibi_training.evaluation_steps(843, 2) == {422, 843}
    assert vibi_training.evaluation_steps(843, 1) == {843}
    assert vibi_training.evaluation_steps(3, 8) == {1, 2, 3}


def test_checkpoint_from_other_settings_is_not_resumed(params, tmp_path, capsys):
    settings = tiny_settings(params, epochs=1, resume=True, warmup_steps=1)
    train_set, val_set = position_task(64, 0), position_task(32, 1)
    checkpoint = tmp_path / "vibi.pt"
    save_torch({"kind": vibi_training.CHECKPOINT_KIND, "fingerprint": "other", "step": 1,
                "model": {}, "optimizer": {}, "noise": torch.Generator().get_state()}, checkpoint)
    train(tiny_model(settings), settings, train_set, val_set, seed=0,
          history=History(), checkpoint=checkpoint, show_progress=False)
    assert "starting afresh" in capsys.readouterr().out


def test_model_round_trips_with_weights_only(tmp_path):
    model = VibiModel(VibiSpec("Unet", 3, 0.25, 3, 32, 32, 10, 64)).eval()
    save_vibi(model, tmp_path / "vibi.pt")
    loaded = load_vibi(tmp_path / "vibi.pt")
    x = torch.rand(2, 3, 32, 32)
    for a, b in zip(model.explain(x), loaded.explain(x)):
        torch.testing.assert_close(a, b)
    assert "fill" not in loaded.spec.to_state()  # the default: saved as before the field existed
    smooth = VibiModel(VibiSpec("Unet", 1, 0.25, 3, 32, 32, 10, 64, "smooth")).eval()
    save_vibi(smooth, tmp_path / "smooth.pt")
    assert load_vibi(tmp_path / "smooth.pt").spec.fill == "smooth"
    mask = hard_top_k(torch.randn(2, smooth.spec.num_chunks), 64)
    torch.testing.assert_close(smooth.masked(x, mask), smooth_fill(x, smooth.pixel_mask(mask)))
    save_torch({"kind": "xai.vibi", "spec": {**smooth.spec.to_state(), "fill": "blur"},
                "state_dict": smooth.state_dict()}, tmp_path / "blur.pt")
    with pytest.raises(CheckpointError, match="fill 'blur'"):
        load_vibi(tmp_path / "blur.pt")
    save_torch({"kind": "xai.vibi", "spec": {"explainer_type": "nope"}, "state_dict": {}},
               tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="this code can rebuild"):
        load_vibi(tmp_path / "bad.pt")


@pytest.mark.parametrize("overrides, pattern", [
    ({"vibi.explainer_type": "ResNet_3x"}, r"vibi\.explainer_type = 'ResNet_3x'.*ResNet_8x"),
    ({"vibi.xpl_channels": 2}, r"vibi\.xpl_channels = 2 is not allowed"),
    ({"vibi.k": 0}, r"vibi\.k = 0 is out of range"),
    ({"vibi.beta": -0.1}, r"vibi\.beta = -0\.1 is out of range"),
    ({"vibi.tau_start": 0.5, "vibi.tau_end": 1.0}, r"vibi\.tau_end = 1\.0 is above"),
    ({"vibi.fill": "blur"}, r"vibi\.fill = 'blur'.*smooth"),
])
def test_bad_vibi_params_are_rejected(params, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(params(overrides))



def test_sharded_draws_equal_the_rows_of_one_global_draw():
    """Under torchrun each rank keeps rows rank::world of the whole batch's Gumbel noise."""
    logits = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    whole = gumbel_softmax_draws(logits, 3, 0.5, 2, torch.Generator().manual_seed(1))
    for rank in (0, 1):
        part = gumbel_softmax_draws(logits[rank::2], 3, 0.5, 2, torch.Generator().manual_seed(1),
                                    shard=(6, rank, 2))
        torch.testing.assert_close(part, whole[rank::2])


def test_a_warm_up_as_long_as_training_is_rejected_before_training(params):
    settings = tiny_settings(params, epochs=1, warmup_steps=16)  # 512 / 32 = 16 steps in all
    with pytest.raises(ConfigError, match=r"^`warmup_steps` = 16 is out of range; allowed: "
                                          r"< 16") as raised:
        train(tiny_model(settings), settings, position_task(512, 0), position_task(64, 1),
              seed=0, history=History(), show_progress=False)
    assert str(param_error(raised.value)).startswith("vibi.warmup_steps = 16")  # as stages say it


@pytest.mark.parametrize("c_in", [4, 8])
def test_the_strided_shortcut_is_the_strided_1x1_convolution(c_in):
    """Its values and gradients are a strided 1x1 convolution's, over few channels (computed on
    the strided input, where oneDNN's own backward crashes on CPUs without AVX-512) and many."""
    torch.manual_seed(0)
    conv = StridedPointwise(c_in, 6, 2)
    x = torch.randn(5, c_in, 9, 8).to(memory_format=torch.channels_last).requires_grad_(True)
    reference = x.detach().contiguous().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    conv(x).square().sum().backward()
    F.conv2d(reference, weight, stride=2).square().sum().backward()
    assert torch.allclose(conv(x), F.conv2d(reference, weight, stride=2), atol=1e-6)
    assert torch.allclose(x.grad, reference.grad, atol=1e-5)
    assert torch.allclose(conv.weight.grad, weight.grad, atol=1e-5)
