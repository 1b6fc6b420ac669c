"""PSNRLoss: value against the PSNR definition, reductions, registry and gradient direction."""
import numpy as np
import pytest
import torch
from basicsr.losses import build_loss
from basicsr.metrics import calculate_psnr

import sdnet_plugin  # noqa: F401
from sdnet_plugin.losses.psnr_loss import PSNRLoss


def test_value_is_negative_psnr_per_image():
    target = torch.rand(2, 3, 8, 10)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    per_image = PSNRLoss(reduction='none')(pred, target)
    assert torch.allclose(per_image, torch.tensor([-20.0, -40.0]), atol=1e-3)
    assert PSNRLoss(loss_weight=0.5)(pred, target).item() == pytest.approx(-15.0, abs=1e-3)
    assert PSNRLoss(reduction='sum')(pred, target).item() == pytest.approx(-60.0, abs=1e-3)


def test_matches_basicsr_psnr_metric_on_8bit_images():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (12, 14, 3)).astype(np.float64)
    out = np.clip(gt + rng.integers(-9, 10, gt.shape), 0, 255)
    to_tensor = lambda img: torch.from_numpy(img / 255.).permute(2, 0, 1)[None].float()  # noqa: E731
    loss = PSNRLoss(eps=1e-12)(to_tensor(out), to_tensor(gt)).item()
    assert -loss == pytest.approx(calculate_psnr(out, gt, crop_border=0), abs=1e-3)


def test_registered_finite_on_identical_images_and_descends():
    loss_fn = build_loss({'type': 'PSNRLoss', 'loss_weight': 1.0})
    target = torch.rand(1, 3, 6, 6)
    assert torch.isfinite(loss_fn(target, target))
    pred = (target + 0.2).requires_grad_()
    loss_fn(pred, target).backward()
    assert (pred.grad > 0).all()  # moving pred towards target lowers the loss


def test_rejects_bad_input():
    with pytest.raises(ValueError, match='reduction'):
        PSNRLoss(reduction='max')
    with pytest.raises(ValueError, match='equal shapes'):
        PSNRLoss()(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))
