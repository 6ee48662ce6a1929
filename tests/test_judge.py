"""The neutral judge: random chunk subsets, a mask channel, black-box init, and that it does not
reward an explainer that encodes the class in the position of its chunks."""

from __future__ import annotations

import pytest
import torch

from xai.chunks import expand, num_chunks, random_budgets, random_chunk_masks
from xai.data.imputation import fill
from xai.evaluation.probes import class_from_mask_correct
from xai.models.blackbox import Architecture
from xai.models.judge import Judge, agreement, load_judge, save_judge
from xai.train.judge import JudgeConfig, train_judge
from xai.train.loop import History


def test_random_masks_keep_the_budget_and_cover_every_size():
    g = torch.Generator().manual_seed(0)
    fixed = random_chunk_masks(500, 16, g, budget=5)
    assert fixed.dtype == torch.bool and (fixed.sum(1) == 5).all()
    sizes = random_chunk_masks(4000, 16, g).sum(1)
    assert sizes.min() == 0 and sizes.max() == 16
    assert abs(sizes.float().mean().item() - 8) < 0.3  # uniform over 0..16
    per_chunk = random_chunk_masks(4000, 16, g, budget=4).float().mean(0)
    assert (per_chunk - 0.25).abs().max() < 0.05  # no chunk favoured


def test_default_budgets_draw_as_before():
    """Linear budgets from 0 consume the generator as the judge always has (noise, then
    randint), so a judge trained with the defaults is bit-identical to one trained before."""
    drawn = random_chunk_masks(300, 49, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = torch.rand(300, 49, generator=g)
    budget = torch.randint(0, 50, (300,), generator=g)
    assert torch.equal(drawn, noise.argsort(1).argsort(1) < budget[:, None])


def test_log_budgets_weigh_every_doubling_alike():
    """Log-uniform sizes from `low` to all chunks: as many in 16..31 as in 256..511 (uniform
    sizes, the control, put 16 times more in the second), none below `low`."""
    g = torch.Generator().manual_seed(0)
    sizes = random_budgets(20000, 1024, g, low=16, scale="log")
    assert sizes.min() >= 16 and sizes.max() <= 1024
    low_octave = ((sizes >= 16) & (sizes < 32)).float().mean().item()
    high_octave = ((sizes >= 256) & (sizes < 512)).float().mean().item()
    assert abs(low_octave - high_octave) < 0.02 and abs(low_octave - 1 / 6) < 0.02
    uniform = random_budgets(20000, 1024, g, low=16)
    in_octave = [((uniform >= lo) & (uniform < 2 * lo)).sum() for lo in (16, 256)]
    assert in_octave[1] > 12 * in_octave[0]
    masks = random_chunk_masks(500, 64, g, low=8, scale="log")
    assert masks.sum(1).min() >= 8
    with pytest.raises(ValueError, match="linear or log"):
        random_budgets(4, 64, g, scale="square")


def test_fill_zero_and_imputed():
    x = torch.rand(4, 1, 8, 8)
    keep = torch.zeros(4, 1, 8, 8)
    keep[..., :4] = 1
    zero = fill(x, keep)
    assert torch.equal(zero[..., :4], x[..., :4]) and (zero[..., 4:] == 0).all()
    both = fill(x, keep, torch.tensor([False, True, False, True]), 0.0)
    assert torch.equal(both[0], zero[0]) and torch.equal(both[1][..., :4], x[1][..., :4])
    assert (both[1][..., 4:] > 0).all()  # imputed from the kept half, not 0


def test_judge_starts_as_the_black_box_and_round_trips(tmp_path):
    spec = Architecture("small_cnn", 1, 3, 8, 4)
    torch.manual_seed(0)
    blackbox = spec.build().eval()
    judge = Judge(spec, chunk=2).eval()
    judge.start_from(blackbox)
    x = torch.rand(5, 1, 8, 8)
    keep = torch.ones_like(x)
    assert torch.allclose(judge(x, keep), blackbox(x), atol=1e-5)
    path = tmp_path / "judge.pt"
    save_judge(judge, path)
    again = load_judge(path)
    assert again.chunk == 2 and torch.equal(again(x, keep), judge(x, keep))


def test_a_mirrored_judge_answers_alike_for_an_image_and_its_mirror(tmp_path):
    """With `mirror` the judge's answer is the mean over the image and its mirror image (mask
    mirrored too), so it cannot tell the two apart; without it, it can; training is unchanged,
    and the readout is chosen at load time, not stored with the weights."""
    spec = Architecture("small_cnn", 1, 3, 8, 4)
    torch.manual_seed(0)
    judge = Judge(spec, chunk=2).eval()
    x = torch.rand(5, 1, 8, 8)
    keep = (torch.rand(5, 1, 8, 8) > 0.5).float()
    plain, mirrored = judge(x, keep), judge(x.flip(-1), keep.flip(-1))
    assert not torch.allclose(plain, mirrored, atol=1e-4)
    path = tmp_path / "judge.pt"
    save_judge(judge, path)
    mirror = load_judge(path, mirror=True)
    assert torch.allclose(mirror(x, keep), (plain + mirrored) / 2, atol=1e-6)
    assert torch.allclose(mirror(x, keep), mirror(x.flip(-1), keep.flip(-1)), atol=1e-6)
    assert torch.equal(load_judge(path)(x, keep), plain)
    mirror.train()
    assert torch.allclose(mirror(x, keep), plain, atol=1e-6)  # training sees one view


def test_a_judge_trained_in_bf16_runs_channels_last_and_saves_its_weights_unchanged(tmp_path):
    spec = Architecture("small_cnn", 3, 3, 8, 4)
    torch.manual_seed(0)
    x = (torch.rand(64, 3, 8, 8) * 255).to(torch.uint8)
    probs = torch.softmax(torch.randn(64, 3), 1)
    judge = Judge(spec, chunk=2)
    train_judge(judge, x, probs, JudgeConfig(epochs=1, batch_size=16, precision="bf16"),
                torch.Generator().manual_seed(0), History(), show_progress=False)
    convs = [m.weight for m in judge.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    path = tmp_path / "judge.pt"
    save_judge(judge, path)
    again = load_judge(path)
    xs, keep = torch.rand(5, 3, 8, 8), torch.ones(5, 3, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 judge.state_dict().values()))
    assert torch.allclose(again(xs, keep), judge(xs, keep), atol=1e-6)

def _cheating_setup(n: int = 600, side: int = 8, chunk: int = 2, seed: int = 0):
    """Images whose class is a bright quadrant (4 classes); a black box that reads it exactly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 1, side, side, generator=g) * 0.2
    h = side // 2
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, col * h:(col + 1) * h] += 0.8
    return x, y


class QuadrantBlackbox(torch.nn.Module):
    """Mean brightness of each quadrant, as logits: reads the content, not any mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.nn.functional.avg_pool2d(x[:, :1], x.shape[-1] // 2).flatten(1)
        return 20 * q


def test_cheating_explainer_is_flagged_and_the_judge_gives_it_low_fidelity():
    torch.manual_seed(0)
    x, y = _cheating_setup()
    blackbox = QuadrantBlackbox()
    probs = blackbox(x).softmax(1)
    pred = probs.argmax(1)
    assert (pred == y).float().mean() > 0.99
    shape, chunk = tuple(x.shape[1:]), 2
    d = num_chunks(shape, chunk)  # 16 chunks of 2 x 2 on 8 x 8
    # The cheat: one chunk whose *position* is the class, in the top row, far from the evidence
    # (the class's quadrant). An approximator trained with it would learn to read the position.
    cheat = torch.zeros(len(x), d, dtype=torch.bool)
    cheat[torch.arange(len(x)), pred] = True
    honest = torch.zeros(len(x), d, dtype=torch.bool)  # the chunk at the centre of the quadrant
    rows, cols = pred // 2, pred % 2
    honest[torch.arange(len(x)), (rows * 2 + 1) * 4 + cols * 2 + 1] = True
    random = random_chunk_masks(len(x), d, torch.Generator().manual_seed(1), budget=1)

    # its class can be read from the position of its chunk; not from random masks
    cheat_enc = class_from_mask_correct(cheat, pred, 4).float().mean().item()
    random_enc = class_from_mask_correct(random, pred, 4).float().mean().item()
    assert cheat_enc > 0.95 and random_enc < 0.4

    # the judge, trained on random subsets only, cannot read the cheat's positions
    judge = Judge(Architecture("small_cnn", 1, 4, 8, 8), chunk)
    train_judge(judge, (x * 255).to(torch.uint8), probs, JudgeConfig(epochs=12, batch_size=32,
                lr=3e-3, imputed_fraction=0.0), torch.Generator().manual_seed(0),
                History(), show_progress=False)

    def judged(mask: torch.Tensor) -> float:
        keep = expand(mask, shape, chunk)
        with torch.no_grad():
            return (judge(x * keep, keep).argmax(1) == pred).float().mean().item()

    assert judged(cheat) < 0.5
    assert judged(honest) > judged(cheat) + 0.3
    # and its agreement with the black box rises with the budget
    g = torch.Generator().manual_seed(2)
    rates = [agreement(judge, x, pred, g, b).float().mean().item() for b in (1, 4, 16)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > 0.9
