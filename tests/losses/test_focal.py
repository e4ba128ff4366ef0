"""Focal losses: torchvision's values and gradients, the closed-form backward, stability, modules."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from hardmine.losses import focal, sigmoid_focal_loss, softmax_focal_loss
from hardmine.losses.focal import _SigmoidFocal

PARAMS = [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.0), (0.9, 3.3), (0.25, 0.5)]


def _data(n: int = 100, classes: int = 80, dtype=torch.float32, seed: int = 0):
    """Logits of both signs up to |x| ~ 16 and sparse one-hot targets."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, classes, generator=g) * 4).to(dtype)
    t = (torch.rand(n, classes, generator=g) < 0.03).to(dtype)
    return x, t


def _loss_and_grad(fn, x, t, alpha, gamma, reduction, upstream=None):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t, alpha, gamma, reduction)
    (loss if upstream is None else loss * upstream).sum().backward()
    return loss.detach(), x.grad


def _assert_matches_torchvision(x, t, alpha, gamma, reduction):
    upstream = torch.rand(x.shape) if reduction == "none" else None
    ours = _loss_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, reduction, upstream)
    theirs = _loss_and_grad(tv_sigmoid_focal_loss, x, t, alpha, gamma, reduction, upstream)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        finite = b.isfinite()  # torchvision's gradient is NaN where q = 0 and gamma < 1
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gamma_zero_without_alpha_is_bce_with_logits(reduction):
    x, t = _data(n=50)
    x[0, :4] = torch.tensor([-200.0, -30.0, 30.0, 200.0])
    loss, grad = _loss_and_grad(sigmoid_focal_loss, x, t, -1, 0.0, reduction)
    bce, bce_grad = _loss_and_grad(
        lambda x, t, a, g, r: F.binary_cross_entropy_with_logits(x, t, reduction=r), x, t, -1, 0, reduction
    )
    torch.testing.assert_close(loss, bce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, bce_grad, rtol=1e-6, atol=1e-7)  # BCE: sigmoid(x) - 1 cancels


@pytest.mark.parametrize("alpha,gamma", PARAMS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_float32_matches_torchvision(alpha, gamma, reduction):
    x, t = _data()
    _assert_matches_torchvision(x, t, alpha, gamma, reduction)


def test_several_chunks_and_a_partial_one_match_torchvision(monkeypatch):
    monkeypatch.setattr(focal, "CPU_CHUNK", 1000)
    x, t = _data(n=101)  # 8 full chunks and one of 80 elements
    _assert_matches_torchvision(x, t, 0.25, 2.0, "none")
    _assert_matches_torchvision(x, t, 0.25, 2.0, "sum")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.9, 3.3)])
def test_half_precision_matches_torchvision_and_is_closer_to_float64(dtype, alpha, gamma):
    x, t = _data(n=400, dtype=dtype)
    ours = _loss_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, "none")
    theirs = _loss_and_grad(tv_sigmoid_focal_loss, x, t, alpha, gamma, "none")
    exact = _loss_and_grad(tv_sigmoid_focal_loss, x.double(), t.double(), alpha, gamma, "none")
    tol = {torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    for a, b, ref in zip(ours, theirs, exact):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        # computed in float32 and rounded once: at least as close to the exact value as torchvision
        assert (a.double() - ref).abs().max() <= (b.double() - ref).abs().max()
    for reduction in ("mean", "sum"):
        total = sigmoid_focal_loss(x, t, alpha, gamma, reduction)
        assert total.dtype == dtype
        reference = tv_sigmoid_focal_loss(x, t, alpha, gamma, reduction)
        torch.testing.assert_close(total, reference, rtol=tol, atol=0)


@pytest.mark.parametrize("alpha,gamma", PARAMS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_closed_form_backward_passes_gradcheck_in_float64(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(12, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    binary = (torch.rand(12, 5, generator=g) < 0.3).double()
    soft = torch.rand(12, 5, generator=g, dtype=torch.float64)
    for t in (binary, soft):
        fn = lambda x, t=t: _SigmoidFocal.apply(x, t, alpha, gamma, reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


def test_soft_targets_match_torchvision():
    x, _ = _data(n=200)
    t = torch.rand(x.shape)
    ours = _loss_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
    theirs = _loss_and_grad(tv_sigmoid_focal_loss, x, t, 0.25, 2.0, "none")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_large_magnitude_inputs_give_finite_exact_results(dtype, gamma):
    big = 6e4 if dtype == torch.float16 else 1e30
    x = torch.tensor([-big, -200.0, -90.0, -30.0, 30.0, 90.0, 200.0, big]).repeat(2, 1).to(dtype)
    t = torch.tensor([[0.0], [1.0]]).expand_as(x).to(dtype)
    loss, grad = _loss_and_grad(sigmoid_focal_loss, x, t, 0.25, gamma, "none")
    assert loss.isfinite().all() and grad.isfinite().all()
    # confidently wrong: loss = alpha_t |x|, gradient alpha_t sign(x); confidently right: 0
    wrong = torch.tensor([[False] * 4 + [True] * 4, [True] * 4 + [False] * 4])
    alpha_t = torch.tensor([[0.75], [0.25]]).expand_as(x)
    torch.testing.assert_close(loss.float()[wrong], (alpha_t * x.float().abs())[wrong], rtol=1e-2, atol=0)
    torch.testing.assert_close(grad.float()[wrong], (alpha_t * x.float().sign())[wrong], rtol=1e-2, atol=0)
    assert (loss.float()[~wrong] < 1e-12).all() and (grad.float()[~wrong].abs() < 1e-12).all()


def test_empty_input_and_targets_get_no_gradient():
    x = torch.zeros(0, 80, requires_grad=True)
    assert sigmoid_focal_loss(x, x.detach(), reduction="none").shape == (0, 80)
    assert sigmoid_focal_loss(x, x.detach(), reduction="sum").item() == 0.0
    assert sigmoid_focal_loss(x, x.detach(), reduction="mean").isnan()
    x, t = _data(n=4)
    x.requires_grad_()
    t.requires_grad_()
    sigmoid_focal_loss(x, t, reduction="sum").backward()
    assert x.grad is not None and t.grad is None


def test_invalid_arguments_raise():
    x, t = _data(n=4)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        sigmoid_focal_loss(x, t[:, :3])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_focal_with_gamma_zero_is_cross_entropy(reduction):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(64, 6, generator=g) * 3).requires_grad_()
    target = torch.randint(0, 6, (64,), generator=g)
    target[::7] = -100
    loss = softmax_focal_loss(logits, target, gamma=0.0, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    ce = F.cross_entropy(logits, target, reduction=reduction)
    (ce_grad,) = torch.autograd.grad(ce.sum(), logits)
    torch.testing.assert_close(loss, ce)
    torch.testing.assert_close(grad, ce_grad)


def test_softmax_focal_values_alpha_and_ignored_samples():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([0, 1, -100])
    p = logits.detach().softmax(1)[[0, 1], [0, 1]]
    focal = -((1 - p) ** 2) * p.log()
    loss = softmax_focal_loss(logits, target, alpha=0.25)
    torch.testing.assert_close(loss, torch.stack([0.75 * focal[0], 0.25 * focal[1], torch.tensor(0.0)]))
    per_class = torch.tensor([0.1, 0.2, 0.3])
    loss = softmax_focal_loss(logits, target, alpha=per_class, reduction="mean")
    torch.testing.assert_close(loss, (0.1 * focal[0] + 0.2 * focal[1]) / 2)
    loss.backward()
    assert logits.grad[2].eq(0).all()
    all_ignored = softmax_focal_loss(logits, torch.full((3,), -100), reduction="mean")
    assert all_ignored.item() == 0.0
    half = softmax_focal_loss(logits.detach().bfloat16(), target)
    assert half.dtype == torch.bfloat16


def test_softmax_mean_skips_ignored_samples():
    logits = torch.randn(10, 4)
    target = torch.tensor([0, 1, 2, 3, -1, -1, 0, 1, 2, 3])
    per_sample = softmax_focal_loss(logits, target, ignore_index=-1)
    assert (per_sample[[4, 5]] == 0).all()
    torch.testing.assert_close(
        softmax_focal_loss(logits, target, reduction="mean", ignore_index=-1), per_sample.sum() / 8
    )
