"""The encoding measure by its definition: controls built to pass it and one built to fail it.

Images whose class is a bright quadrant; a black box that reads the quadrants; as the judge (a
model of p(y | x_v)) the black box on the kept pixels. Random chunks and one fixed selection for
every image are non-encoding by construction; a selection whose top chunk is numbered like the
class encodes by construction. The measure must tell them apart.
"""

from __future__ import annotations

import pytest
import torch

import xai
from tests.test_judge import QuadrantBlackbox, _cheating_setup
from xai.evaluation.controls import ClassInPosition, FixedChunks
from xai.evaluation.encoding import encoding_gain, paired_images
from xai.models.judge import Judge

pytestmark = pytest.mark.usefixtures("one_thread")


class KeptPixels(torch.nn.Module):
    """A judge-shaped model of p(y | x_v): the black box on the kept pixels, 0 elsewhere."""

    def __init__(self, blackbox: torch.nn.Module, chunk: int) -> None:
        super().__init__()
        self.blackbox = blackbox
        self.chunk = chunk

    def forward(self, filled: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.blackbox(filled)

    chunk_keep = Judge.chunk_keep


def test_paired_images_are_a_seeded_derangement():
    pairs = paired_images(101, seed=3)
    assert sorted(pairs.tolist()) == list(range(101))
    assert not (pairs == torch.arange(101)).any()
    assert torch.equal(pairs, paired_images(101, seed=3))
    assert not torch.equal(pairs, paired_images(101, seed=4))


def test_the_measure_flags_the_cheat_and_not_the_two_non_encoding_controls():
    torch.manual_seed(0)
    x, _ = _cheating_setup(n=600)
    blackbox = QuadrantBlackbox()
    methods = {"random": xai.RandomChunks(blackbox, chunk=2, seed=1),
               "fixed": FixedChunks(blackbox, chunk=2),
               "cheat": ClassInPosition(blackbox, chunk=2, seed=1)}
    report = xai.evaluate(methods, blackbox, x, judge=KeptPixels(blackbox, 2), chunk=2, k=2,
                          budgets=(2,), robustness_images=0, curve_points=3, bootstrap=500)
    rows = report.table["methods"]
    low, high = ({name: rows[name][f"encoding_ci_{end}"] for name in methods}
                 for end in ("low", "high"))
    assert low["random"] <= 0 <= high["random"] and low["fixed"] <= 0 <= high["fixed"]
    assert low["cheat"] > 0
    assert rows["cheat"]["encoding"] >= 5 * max(high["random"], high["fixed"])


def test_knowing_the_selection_adds_nothing_when_it_is_independent_of_the_class():
    """Selections and values drawn independently of the class: the gain is about 0; make the
    selection the class and it is large."""
    g = torch.Generator().manual_seed(0)
    n, d, classes = 600, 8, 4
    y = torch.randint(0, classes, (n,), generator=g)
    values = torch.log_softmax(torch.randn(n, classes, generator=g)
                               + torch.nn.functional.one_hot(y, classes), 1)  # the pixels say something about the class
    independent = torch.rand(n, d, generator=g) < 0.5
    pairs = paired_images(n, 0)
    none = encoding_gain(values, independent, values, independent[pairs], y, classes)
    told = torch.nn.functional.one_hot(y, d).bool()
    gain = encoding_gain(values, told, values, told[pairs], y, classes)
    assert abs(none.mean().item()) < 0.03
    assert gain.mean().item() > 0.3
