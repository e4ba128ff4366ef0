"""The one training path of the heads: normalisers, the loss-mask mode, batches without objects."""

import torch
from torch import Tensor

from hardmine.losses import BCE, L1
from hardmine.models.criterion import ForegroundNormaliser, SampledNormaliser
from hardmine.models.dense_head import DenseHead
from hardmine.sampling import IoUThresholds, OHEMSampler


def tiles() -> Tensor:
    """16 non-overlapping 16x16 anchors tiling a 64x64 image, row by row."""
    ys, xs = torch.meshgrid(torch.arange(0, 64, 16.0), torch.arange(0, 64, 16.0), indexing="ij")
    corners = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    return torch.cat([corners, corners + 16], dim=1)


TARGETS = [
    {
        "boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0], [20.0, 20.0, 44.0, 36.0]]),
        "labels": torch.tensor([1, 2]),
    },
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def outputs() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 16, 2, generator=g).requires_grad_(), (
        0.1 * torch.randn(2, 16, 4, generator=g)
    ).requires_grad_()


def test_sampled_normaliser_counts_samples_or_foreground_coordinates():
    labels = torch.tensor([1, 0, 2, 0, 0, 1, 0, 0, 0, 0])
    assert SampledNormaliser()(10, labels, guided=False) == (10, 10)
    assert SampledNormaliser()(10, labels, guided=True) == (10, 12)  # 3 foreground x 4 coordinates
    assert SampledNormaliser()(0, labels[:0], guided=True) == (1, 1)


def test_foreground_normaliser_moves_only_in_training():
    normaliser = ForegroundNormaliser(momentum=0.5, init=10.0)
    labels = torch.tensor([1, 1, 0, 2])
    assert normaliser(4, labels, False)[0].item() == 0.5 * 10 + 0.5 * 3
    normaliser.eval()
    assert normaliser(4, labels, False)[0].item() == 6.5
    assert ForegroundNormaliser(momentum=0.0)(4, labels, False)[0].item() == 3.0


def test_the_loss_mask_mode_trains_like_two_passes_in_a_dense_head():
    results = {}
    for mode in ("two_pass", "loss_mask"):
        sampler = OHEMSampler(IoUThresholds(0.5, 0.0, 0.4), batch_size_per_image=4, mode=mode)
        head = DenseHead(
            8, 1, 2, sampler=sampler, cls_loss=BCE(alpha=-1.0), reg_loss=L1(), normalizer_momentum=0.0
        )
        logits, deltas = outputs()
        losses = head.loss(logits, deltas, [tiles(), tiles()], TARGETS)
        sum(losses.values()).backward()
        results[mode] = (losses, logits.grad, deltas.grad, {k: float(v) for k, v in head.last_stats.items()})
    (loss_a, lg_a, dg_a, stats_a), (loss_b, lg_b, dg_b, stats_b) = results["two_pass"], results["loss_mask"]
    for key in loss_a:
        torch.testing.assert_close(loss_a[key], loss_b[key])
    torch.testing.assert_close(lg_a, lg_b)
    torch.testing.assert_close(dg_a, dg_b)
    assert stats_a == stats_b and stats_a["num_fg"] + stats_a["num_bg"] == 8


def test_without_foreground_the_box_loss_is_zero_and_still_reaches_the_deltas():
    head = DenseHead(8, 1, 2, normalizer_momentum=0.0)
    logits, deltas = outputs()
    losses = head.loss(logits, deltas, [tiles(), tiles()], [TARGETS[1], TARGETS[1]])
    assert losses["loss_dense_box"].item() == 0.0
    sum(losses.values()).backward()
    assert deltas.grad is not None and (deltas.grad == 0).all()  # a zero gradient, as torchvision's heads
