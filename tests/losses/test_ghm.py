"""GHM-C / GHM-R: hand-computed values, the EMA, degenerate batches, and a per-bin loop reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from hardmine.losses import GHMC, GHMR


def _bce(x: float, t: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0) - t * x


def _loop_weights(g, valid, bins, last_edge, momentum, acc_sum, tot):
    """The straightforward reference: one pass over the bins, as in the authors' code."""
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] = last_edge
    weights = torch.zeros_like(g)
    non_empty = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num = inds.sum().item()
        if num > 0:
            if momentum > 0:
                acc_sum[i] = momentum * acc_sum[i] + (1 - momentum) * num
                weights[inds] = tot / acc_sum[i]
            else:
                weights[inds] = tot / num
            non_empty += 1
    return weights / non_empty if non_empty else weights


def ghmc_loop(pred, target, label_weight, bins, momentum, acc_sum):
    g = (pred.detach().sigmoid() - target).abs()
    valid = label_weight > 0
    tot = max(valid.float().sum().item(), 1.0)
    weights = _loop_weights(g, valid, bins, 1.0 + 1e-6, momentum, acc_sum, tot)
    return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


def ghmr_loop(pred, target, label_weight, mu, bins, momentum, acc_sum):
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = (diff / torch.sqrt(diff * diff + mu * mu)).abs().detach()
    tot = max(label_weight.float().sum().item(), 1.0)
    weights = _loop_weights(g, label_weight > 0, bins, 1e3, momentum, acc_sum, tot)
    return (loss * weights).sum() / tot


def test_one_bin_without_momentum_is_the_mean_bce_over_valid_elements():
    pred = torch.tensor([[0.0, 2.0, -1.0, 5.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # tot = 3 valid, one bin holding all 3, n = 1: weight = 3 / 3 / 1 = 1, loss = sum(bce) / 3
    expected = (_bce(0.0, 1.0) + _bce(2.0, 0.0) + _bce(-1.0, 0.0)) / 3
    loss = GHMC(bins=1, momentum=0.0)(pred, target, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_two_bins_weight_each_bin_by_tot_over_count_and_non_empty_bins():
    # g = |sigmoid(x) - t| = 0.5, 0.047, 0.119: bin 1 (g >= 0.5) holds 1, bin 0 holds 2; tot = 3, n = 2
    pred = torch.tensor([0.0, -3.0, -2.0], requires_grad=True)
    target = torch.zeros(3)
    loss = GHMC(bins=2, momentum=0.0)(pred, target)
    w_bin0, w_bin1 = 3 / 2 / 2, 3 / 1 / 2
    expected = (w_bin1 * _bce(0.0, 0) + w_bin0 * (_bce(-3.0, 0) + _bce(-2.0, 0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    sig = torch.tensor([0.0, -3.0, -2.0]).sigmoid()
    torch.testing.assert_close(pred.grad, torch.tensor([w_bin1, w_bin0, w_bin0]) * sig / 3)


def test_ema_of_bin_counts_after_two_calls():
    ghm = GHMC(bins=2, momentum=0.75)
    ghm(torch.tensor([0.0, -3.0, -2.0]), torch.zeros(3))  # counts [2, 1]
    torch.testing.assert_close(ghm.acc_sum, torch.tensor([0.25 * 2, 0.25 * 1]))
    loss = ghm(torch.tensor([4.0]), torch.ones(1))  # g = 0.018, counts [1, 0]: bin 1 keeps its average
    torch.testing.assert_close(ghm.acc_sum, torch.tensor([0.75 * 0.5 + 0.25 * 1, 0.25]))
    # tot = 1, n = 1 non-empty bin: weight = 1 / 0.625
    assert loss.item() == pytest.approx(_bce(4.0, 1.0) / 0.625 / 1, rel=1e-6)
    assert "acc_sum" in ghm.state_dict() and "edges" not in ghm.state_dict()


def test_degenerate_batches_give_finite_losses():
    pred = torch.randn(8, 5, requires_grad=True)
    ghm = GHMC()
    nothing_valid = ghm(pred, torch.zeros(8, 5), torch.zeros(8, 1))
    assert nothing_valid.item() == 0.0
    nothing_valid.backward()
    assert pred.grad.eq(0).all()
    torch.testing.assert_close(ghm.acc_sum, torch.zeros(30))  # nothing counted
    no_positive = ghm(pred, torch.zeros(8, 5))
    assert no_positive.isfinite() and no_positive > 0
    empty = GHMC(momentum=0.0)(torch.zeros(0, 5), torch.zeros(0, 5))
    assert empty.item() == 0.0
    ghmr = GHMR()
    assert ghmr(pred, torch.zeros(8, 5), torch.zeros(8, 5)).item() == 0.0
    assert ghmr(pred, pred.detach()).item() == 0.0  # all residuals in bin 0


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_matches_the_per_bin_loop(momentum):
    g = torch.Generator().manual_seed(0)
    ghm = GHMC(bins=30, momentum=momentum)
    acc_sum = torch.zeros(30)
    for _ in range(3):
        pred = (torch.randn(300, 20, generator=g) * 3).requires_grad_()
        target = (torch.rand(300, 20, generator=g) < 0.05).float()
        label_weight = (torch.rand(300, 1, generator=g) < 0.8).float().expand(300, 20)
        loss = ghm(pred, target, label_weight)
        (grad,) = torch.autograd.grad(loss, pred)
        ref = ghmc_loop(pred, target, label_weight, 30, momentum, acc_sum)
        (ref_grad,) = torch.autograd.grad(ref, pred)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(grad, ref_grad)
        if momentum:
            torch.testing.assert_close(ghm.acc_sum, acc_sum)


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_ghmr_matches_the_per_bin_loop(momentum):
    g = torch.Generator().manual_seed(1)
    ghm = GHMR(mu=0.02, bins=10, momentum=momentum)
    acc_sum = torch.zeros(10)
    for _ in range(3):
        pred = (torch.randn(200, 4, generator=g) * 0.1).requires_grad_()
        target = torch.randn(200, 4, generator=g) * 0.1
        label_weight = (torch.rand(200, 1, generator=g) < 0.3).float().expand(200, 4)
        loss = ghm(pred, target, label_weight)
        (grad,) = torch.autograd.grad(loss, pred)
        ref = ghmr_loop(pred, target, label_weight, 0.02, 10, momentum, acc_sum)
        (ref_grad,) = torch.autograd.grad(ref, pred)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(grad, ref_grad)
        if momentum:
            torch.testing.assert_close(ghm.acc_sum, acc_sum)


def test_ghmr_one_bin_is_the_mean_authentic_smooth_l1():
    pred = torch.tensor([0.0, 0.02, 1.0])
    loss = GHMR(mu=0.02, bins=1, momentum=0.0)(pred, torch.zeros(3))
    expected = (0.0 + (math.sqrt(2 * 0.02**2) - 0.02) + (math.sqrt(1 + 0.02**2) - 0.02)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_reductions_dtypes_and_arguments():
    pred, target = torch.randn(6, 3), (torch.rand(6, 3) < 0.5).float()
    mean = GHMC(momentum=0.0)(pred, target)
    elementwise = GHMC(momentum=0.0, reduction="none")(pred, target)
    total = GHMC(momentum=0.0, reduction="sum")(pred, target)
    assert elementwise.shape == (6, 3)
    torch.testing.assert_close(total, elementwise.sum())
    torch.testing.assert_close(mean, total / 18)
    assert GHMC()(pred.bfloat16(), target).dtype == torch.float32
    with pytest.raises(ValueError, match="bins"):
        GHMC(bins=0)
    with pytest.raises(ValueError, match="momentum"):
        GHMC(momentum=1.0)
    with pytest.raises(ValueError, match="mu"):
        GHMR(mu=0.0)
    with pytest.raises(ValueError, match="reduction"):
        GHMR(reduction="avg")
