"""Guided loss scaling: the value follows the box loss, the gradient the classification loss."""

import torch

from hardmine.losses import guided_loss_scale


def test_value_is_the_box_loss_times_the_scale_and_no_gradient_reaches_the_box_loss():
    cls = torch.tensor(2.0, requires_grad=True)
    box = torch.tensor(0.5, requires_grad=True)
    out = guided_loss_scale(cls, box)
    assert out.item() == 0.5
    out.backward()
    assert cls.grad.item() == 0.25  # the factor box / cls, a constant
    assert box.grad is None
    assert guided_loss_scale(torch.tensor(2.0), torch.tensor(0.5), scale=2.0).item() == 1.0


def test_the_gradient_direction_is_that_of_the_unscaled_loss():
    logits = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    cls = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 0.0]))
    (plain,) = torch.autograd.grad(cls, logits, retain_graph=True)
    scaled = guided_loss_scale(cls, torch.tensor(0.1))
    (guided,) = torch.autograd.grad(scaled, logits)
    torch.testing.assert_close(guided, plain * (0.1 / cls.item()))


def test_zero_box_or_cls_loss_gives_zero_and_stays_finite():
    cls = torch.tensor(1.5, requires_grad=True)
    out = guided_loss_scale(cls, torch.tensor(0.0))
    out.backward()
    assert out.item() == 0.0 and cls.grad.item() == 0.0
    assert guided_loss_scale(torch.tensor(0.0), torch.tensor(3.0)).item() == 0.0
    assert guided_loss_scale(torch.tensor(1.0), torch.tensor(float("nan"))).item() == 0.0


def test_dtype_is_kept():
    out = guided_loss_scale(torch.tensor(2.0, dtype=torch.bfloat16), torch.tensor(1.0))
    assert out.dtype == torch.bfloat16 and out.item() == 1.0
