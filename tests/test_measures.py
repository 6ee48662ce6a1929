"""Explanation measures on constructed cases with known answers."""

from __future__ import annotations

import torch

from xai.chunks import chunk_areas, chunk_scores, expand, top_k_mask
from xai.data.imputation import noisy_linear_impute
from xai.evaluation.measures import (
    agrees_on,
    auc,
    deletion_insertion,
    posthoc_agreement,
    sparseness,
)


def test_sparseness_of_one_hot_is_one_and_of_uniform_is_zero():
    one_hot = torch.zeros(3, 49)
    one_hot[torch.arange(3), torch.tensor([0, 7, 48])] = 2.5
    torch.testing.assert_close(sparseness(one_hot), torch.ones(3))
    torch.testing.assert_close(sparseness(torch.full((2, 49), 0.3)), torch.zeros(2))
    mixed = sparseness(torch.rand(4, 49, generator=torch.Generator().manual_seed(0)))
    assert ((mixed > 0) & (mixed < 1)).all()


def test_chunk_scores_sum_each_patch_and_expand_inverts_the_grid():
    attr = torch.zeros(1, 1, 4, 4)
    attr[0, 0, 0, 1] = -1.0  # top-left 2x2 chunk
    attr[0, 0, 3, 3] = 2.0   # bottom-right chunk
    scores = chunk_scores(attr, 2)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
    mask = top_k_mask(scores, 1)
    assert mask.tolist() == [[False, False, False, True]]
    pixels = expand(mask, (3, 4, 4), 2)
    assert pixels.shape == (1, 3, 4, 4) and pixels[0, :, 2:, 2:].all()
    assert pixels.sum() == 3 * 4


def test_hard_mask_keeps_exactly_k_even_with_ties():
    scores = torch.zeros(5, 49)
    assert (top_k_mask(scores, 4).sum(1) == 4).all()


class UsesOneChunk(torch.nn.Module):
    """Logits from the mean of the top-left 2x2 chunk of an 8x8 image only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 8 * (x[:, 0, :2, :2].mean((1, 2)) - 0.25)
        return torch.stack([s, -s], 1)


def test_exact_attribution_beats_random_on_deletion_and_posthoc():
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(64, 1, 8, 8, generator=g)  # class 0 everywhere
    model = UsesOneChunk()
    target = model(x).argmax(1)
    exact = torch.zeros(64, 16)
    exact[:, 0] = 1.0
    random = torch.rand(64, 16, generator=g)
    del_exact, ins_exact, frac = deletion_insertion(model, x, exact, target, chunk=2)
    del_rand, ins_rand, _ = deletion_insertion(model, x, random, target, chunk=2)
    assert auc(del_exact, frac).mean() < auc(del_rand, frac).mean() - 0.1
    assert auc(ins_exact, frac).mean() > auc(ins_rand, frac).mean() + 0.1
    # the curves start and end where they must: whole input, then blank input
    torch.testing.assert_close(del_exact[:, 0], ins_exact[:, -1])
    torch.testing.assert_close(del_exact[:, -1], ins_exact[:, 0])
    keep_exact = expand(top_k_mask(exact, 1), (1, 8, 8), 2)
    keep_rand = expand(top_k_mask(random, 1), (1, 8, 8), 2)
    assert posthoc_agreement(model, x, keep_exact, target).float().mean() == 1.0
    assert posthoc_agreement(model, x, keep_rand, target).float().mean() < 0.5



def test_curves_do_not_depend_on_how_points_and_images_are_batched():
    """Rows (curve point, image) are batched across points: a batch of 7 (splitting points and
    images unevenly) and one of 10,000 (everything in one call) give the same curves, with the
    blank fill and with a fill that sees which rows it gets (the image's own mean)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g)
    model = UsesOneChunk()
    target = model(x).argmax(1)
    scores = torch.rand(6, 16, generator=g)

    def mean_fill(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep > 0.5, images, images.mean((1, 2, 3), keepdim=True))

    for fill in (None, mean_fill):
        small = deletion_insertion(model, x, scores, target, chunk=2, points=5, batch_size=7,
                                   fill=fill)
        whole = deletion_insertion(model, x, scores, target, chunk=2, points=5,
                                   batch_size=10_000, fill=fill)
        for a, b in zip(small, whole):
            torch.testing.assert_close(a, b)
        deletion = small[0]
        for j, count in enumerate((0, 4, 8, 12, 16)):  # point j removes the `count` best chunks
            keep = ~top_k_mask(scores, count) if count else torch.ones(6, 16, dtype=torch.bool)
            pixels = expand(keep, (1, 8, 8), 2).float()
            filled = x * pixels if fill is None else fill(x, pixels)
            expected = model(filled).softmax(1).gather(1, target[:, None]).squeeze(1)
            torch.testing.assert_close(deletion[:, j], expected)

def test_partial_chunks_match_the_explainer_grid():
    # ResNet_8x on 28 x 28: a 4 x 4 grid whose last row and column are 4 px wide
    from xai.explain.attribution import ExplainerDistribution
    from xai.models.vibi import VibiModel, VibiSpec

    vibi = VibiModel(VibiSpec("ResNet_8x", 1, 0.25, 1, 28, 28, 10, 3)).eval()
    areas = chunk_areas((1, 28, 28), 8)
    assert areas.shape == (1, 16) and areas.sum() == 28 * 28
    assert areas[0, 0] == 64 and areas[0, 3] == 32 and areas[0, 15] == 16
    mask = torch.zeros(2, 16)
    mask[:, 15] = 1  # the bottom-right corner chunk: rows and columns 24-27
    pixels = expand(mask, (1, 28, 28), 8)
    assert pixels.shape == (2, 1, 28, 28) and pixels.sum() == 2 * 16
    assert pixels[:, :, 24:, 24:].all()
    torch.testing.assert_close(pixels, vibi.pixel_mask(mask), rtol=0, atol=0)

    x = torch.rand(2, 1, 28, 28)
    attr = ExplainerDistribution("vibi", vibi, vibi).attribute(x)
    p = vibi.chunk_logits(x).softmax(1)
    torch.testing.assert_close(chunk_scores(attr, 8), p)  # the map sums back to p(z | x)


def test_posthoc_with_roads_fill_keeps_the_prediction_on_the_evidence_only():
    """The model reads which of 9 chunks holds a bright patch. Kept with the rest ROAD-imputed,
    the patch's chunk and a dim one (the control built to pass) keep every prediction: the fill
    lies between them, below the patch; two dim chunks (built to fail) almost none, since
    imputation fills the removed patch from its dim surroundings."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (90,), generator=g)
    x = 0.3 * torch.rand(90, 1, 12, 12, generator=g)
    for i, label in enumerate(labels.tolist()):
        x[i, 0, label // 3 * 4:label // 3 * 4 + 4, label % 3 * 4:label % 3 * 4 + 4] = 1.0

    def model(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images, 4).flatten(1)

    def road(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return noisy_linear_impute(images, keep > 0.5, 0.01, torch.Generator().manual_seed(1))

    pred = model(x).argmax(1)
    assert torch.equal(pred, labels)
    def kept(*chunks: torch.Tensor) -> torch.Tensor:
        chunk_mask = sum(torch.nn.functional.one_hot(c, 9).float() for c in chunks)
        return expand(chunk_mask, (1, 12, 12), 4)

    evidence, elsewhere = kept(labels, (labels + 4) % 9), kept((labels + 2) % 9, (labels + 4) % 9)
    assert agrees_on(model, road(x, evidence), pred).float().mean() == 1.0
    assert agrees_on(model, road(x, elsewhere), pred).float().mean() < 0.2
    assert agrees_on(model, x * evidence, pred).float().mean() == 1.0  # 0-fill: both pass ...
    assert agrees_on(model, x * elsewhere, pred).float().mean() < 0.2  # ... and fail
