"""Balanced L1: values at known points, continuity at beta, gradients, module convention."""

import math

import pytest
import torch

from hardmine.losses import balanced_l1_loss

ALPHA, GAMMA = 0.5, 1.5
B = math.exp(GAMMA / ALPHA) - 1  # e^3 - 1


def _inlier(x: float, beta: float = 1.0) -> float:
    return ALPHA / B * (B * x + 1) * math.log(B * x / beta + 1) - ALPHA * x


def test_values_at_known_points():
    diff = torch.tensor([0.0, 0.25, -0.5, 0.999, 1.0, -2.0, 10.0], dtype=torch.float64)
    expected = [0.0, _inlier(0.25), _inlier(0.5), _inlier(0.999)]
    expected += [GAMMA * x + GAMMA / B - ALPHA for x in (1.0, 2.0, 10.0)]
    loss = balanced_l1_loss(diff, torch.zeros_like(diff))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    assert loss[4].item() == pytest.approx(1.5 + 1.5 / (math.e**3 - 1) - 0.5)


@pytest.mark.parametrize("beta", [1.0, 0.5, 1 / 9])
def test_value_is_continuous_at_beta(beta):
    x = torch.tensor([beta * (1 - 1e-9), beta], dtype=torch.float64)
    below, at = balanced_l1_loss(x, torch.zeros_like(x), beta=beta).tolist()
    assert below == pytest.approx(at, abs=1e-8)


def test_gradient_is_alpha_log_inside_and_gamma_outside():
    x = torch.tensor([0.0, 0.3, -0.3, 1 - 1e-9, 1.0, 4.0, -4.0], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x)).sum().backward()
    inside = [ALPHA * math.log(B * v + 1) for v in (0.0, 0.3)]
    expected = [inside[0], inside[1], -inside[1], GAMMA, GAMMA, GAMMA, -GAMMA]  # d/dx at |x| -> 1 is gamma
    torch.testing.assert_close(x.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-7)
    pred = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(20, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: balanced_l1_loss(p, target, beta=0.7), (pred,))


def test_huge_residuals_stay_finite():
    pred = torch.tensor([1e30, -1e30, 1e38], requires_grad=True)
    loss = balanced_l1_loss(pred, torch.zeros(3))
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all()


def test_non_positive_parameters_are_refused():
    pred, target = torch.randn(5, 4), torch.randn(5, 4)
    for bad in ({"alpha": 0.0}, {"gamma": -1.0}, {"beta": 0.0}):
        with pytest.raises(ValueError, match="alpha, gamma and beta must be > 0"):
            balanced_l1_loss(pred, target, **bad)
