"""PSNR loss (negative PSNR per image), popular in deblurring recipes; pip ``basicsr`` 1.4.2 does not ship one."""
import math

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    """Negative PSNR: ``10 * log10(MSE + eps)`` per image, for images in [0, ``data_range``].

    Minimising it maximises the PSNR of every image. Unlike the MSE it weights each image by its own error level, so
    nearly solved images keep contributing gradient.

    Args:
        loss_weight (float): Weight of the loss. Default: 1.0.
        reduction (str): ``'mean'`` or ``'sum'`` over the images of the batch, or ``'none'``. Default: ``'mean'``.
        data_range (float): Peak value of the images. Default: 1.0.
        eps (float): Added to the MSE so that identical images give a finite loss. Default: 1e-8.
    """

    def __init__(self, loss_weight=1.0, reduction='mean', data_range=1.0, eps=1e-8):
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if data_range <= 0 or eps <= 0:
            raise ValueError(f'data_range and eps must be positive, got {data_range} and {eps}')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.data_range = data_range
        self.eps = eps

    def forward(self, pred, target, weight=None, **kwargs):
        """
        Args:
            pred (Tensor): ``(B, C, H, W)`` restored images.
            target (Tensor): ``(B, C, H, W)`` ground truth.
            weight (Tensor | None): Unused; accepted for BasicSR's pixel-loss call signature. Default: None.

        Returns:
            Tensor: Scalar (``(B,)`` with ``reduction='none'``).
        """
        if pred.shape != target.shape:
            raise ValueError(f'PSNRLoss needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}')
        mse = ((pred - target) / self.data_range).pow(2).flatten(1).mean(dim=1)
        loss = (10 / math.log(10)) * torch.log(mse + self.eps)
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss
