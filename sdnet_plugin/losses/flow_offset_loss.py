"""Optical-flow guided offset loss (SDNet, Yuan, Su and Ma, CVPR 2020).

Flow convention used throughout the project: ``(B, 4, H, W)`` = ``(u_first, v_first, u_last, v_last)`` in input
pixels; ``(u_first, v_first)`` at pixel p is where the scene point seen at p in the sharp (middle) frame lies in the
first frame of the exposure, minus p (likewise for the last frame); u is horizontal.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


def _check_flow(flow):
    if flow.dim() != 4 or flow.shape[1] != 4:
        raise ValueError(f'flow must be (B, 4, H, W) = (u_first, v_first, u_last, v_last), got {tuple(flow.shape)}')


def downsample_flow(flow, stride):
    """Area-average a flow to ``ceil(H/stride) x ceil(W/stride)`` and express it in that grid's pixels.

    Borders that do not fill a whole cell are padded by replication first (the network pads its input the same way).
    """
    _check_flow(flow)
    if stride == 1:
        return flow
    h, w = flow.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if pad_h or pad_w:
        flow = F.pad(flow, (0, pad_w, 0, pad_h), mode='replicate')
    return F.avg_pool2d(flow, stride) / stride


def trajectory_coefficients(num_points):
    """Weights ``(a_first, a_last)`` placing kernel point j at ``a_first[j] * F_first + a_last[j] * F_last``.

    With c = (K-1)/2: points before c are spread evenly from F_first to the centre, c sits at 0, points after c
    spread evenly from the centre to F_last.
    """
    c = (num_points - 1) / 2
    j = torch.arange(num_points, dtype=torch.float64)
    a_first = torch.where(j < c, (c - j) / c, torch.zeros_like(j)) if c > 0 else torch.zeros_like(j)
    a_last = torch.where(j > c, (j - c) / (num_points - 1 - c), torch.zeros_like(j)) if c > 0 else torch.zeros_like(j)
    return a_first, a_last


def flow_to_offsets(flow, kernel_size=3, dilation=1, stride=1):
    """Target DCN offsets for a deformable kernel whose sampling points follow the blur trajectory.

    Args:
        flow (Tensor): ``(B, 4, H, W)`` bi-directional flow in input pixels (project convention).
        kernel_size (int): Deformable kernel size k; K = k * k points in raster order. Default: 3.
        dilation (int): Dilation of the deformable kernel. Default: 1.
        stride (int): Stride of the feature map the kernel runs on, relative to the input. Default: 1.

    Returns:
        Tensor: ``(B, 2K, ceil(H/stride), ceil(W/stride))`` offsets, interleaved ``(dy, dx)`` per point.
    """
    flow = downsample_flow(flow, stride)
    b, _, h, w = flow.shape
    k = kernel_size
    a_first, a_last = (a.to(flow) for a in trajectory_coefficients(k * k))
    j = torch.arange(k * k, device=flow.device)
    grid_y = ((j // k).to(flow) - (k - 1) / 2) * dilation
    grid_x = ((j % k).to(flow) - (k - 1) / 2) * dilation
    u_first, v_first, u_last, v_last = flow.unbind(1)
    target_y = a_first.view(1, -1, 1, 1) * v_first[:, None] + a_last.view(1, -1, 1, 1) * v_last[:, None]
    target_x = a_first.view(1, -1, 1, 1) * u_first[:, None] + a_last.view(1, -1, 1, 1) * u_last[:, None]
    dy = target_y - grid_y.view(1, -1, 1, 1)
    dx = target_x - grid_x.view(1, -1, 1, 1)
    return torch.stack((dy, dx), dim=2).view(b, 2 * k * k, h, w)


@LOSS_REGISTRY.register()
class FlowGuidedOffsetLoss(nn.Module):
    """Supervises the sampling points of every SVD module with the bi-directional optical flow.

    Args:
        loss_weight (float): Weight of the whole term. Default: 1.0.
        criterion (str): ``'l1'`` or ``'charbonnier'`` distance per offset coordinate. Default: ``'l1'``.
        eps (float): Charbonnier epsilon, in feature pixels. Default: 1e-3.
        module_weights (list[float] | None): One weight per SVD module, in the order the network returns them.
            Default: None (all 1).
        motion_threshold (float): Supervise only pixels whose larger flow magnitude (first or last, in input
            pixels) exceeds this. 0 supervises every pixel. Default: 0.
        reduction (str): ``'mean'`` (over supervised elements, then averaged over modules) or ``'sum'``.
            Default: ``'mean'``.
        order_invariant (bool): Score each pixel against the nearer of the two time orders of its trajectory
            (first->last, or the same points with ``F_first`` and ``F_last`` swapped). A blurry image is the same
            whichever way the scene moved during the exposure, so the order cannot be predicted from it; with
            ordered targets, opposite orders of similar-looking blur pull the endpoints towards their average.
            Default: False (the ordered targets of :func:`flow_to_offsets`).
    """

    def __init__(self, loss_weight=1.0, criterion='l1', eps=1e-3, module_weights=None, motion_threshold=0.0,
                 reduction='mean', order_invariant=False):
        super().__init__()
        if criterion not in ('l1', 'charbonnier'):
            raise ValueError(f"criterion must be 'l1' or 'charbonnier', got {criterion!r}")
        if reduction not in ('mean', 'sum'):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.loss_weight = loss_weight
        self.criterion = criterion
        self.eps = eps
        self.module_weights = module_weights
        self.motion_threshold = motion_threshold
        self.reduction = reduction
        self.order_invariant = order_invariant

    def _distance(self, diff):
        return diff.abs() if self.criterion == 'l1' else torch.sqrt(diff * diff + self.eps * self.eps)

    def forward(self, offsets, flow):
        """
        Args:
            offsets (list[dict]): Per SVD module: ``offset`` ``(B, 2K, h, w)``, ``stride``, ``kernel_size``,
                ``dilation`` (as returned by ``SDNet(x, return_offsets=True)``).
            flow (Tensor): ``(B, 4, H, W)`` flow of the input image, with ``h = ceil(H/stride)``.

        Returns:
            Tensor: Scalar loss.
        """
        _check_flow(flow)
        if not offsets:
            raise ValueError('FlowGuidedOffsetLoss got no offsets: the network has no SVD module')
        if self.module_weights is not None and len(self.module_weights) != len(offsets):
            raise ValueError(f'module_weights has {len(self.module_weights)} entries for {len(offsets)} SVD modules')
        height, width = flow.shape[-2:]
        total = 0
        for i, item in enumerate(offsets):
            offset, stride = item['offset'], item['stride']
            expected = (flow.shape[0], offset.shape[1], -(-height // stride), -(-width // stride))
            if tuple(offset.shape) != expected:
                raise ValueError(f'flow of size {height}x{width} (batch {flow.shape[0]}) does not match SVD module '
                                 f'{i} offsets {tuple(offset.shape)} at stride {stride}: flow and image sizes differ')
            kernel = (item['kernel_size'], item['dilation'], stride)
            dist = self._distance(offset - flow_to_offsets(flow, *kernel).to(offset.dtype))
            if self.order_invariant:
                dist_reversed = self._distance(offset -
                                               flow_to_offsets(flow[:, [2, 3, 0, 1]], *kernel).to(offset.dtype))
                use_reversed = dist_reversed.sum(1, keepdim=True) < dist.sum(1, keepdim=True)
                dist = torch.where(use_reversed, dist_reversed, dist)
            if self.motion_threshold > 0:
                motion = downsample_flow(flow, stride) * stride  # back to input pixels
                magnitude = torch.maximum(motion[:, 0:2].norm(dim=1), motion[:, 2:4].norm(dim=1))
                weight = (magnitude > self.motion_threshold).to(dist.dtype).unsqueeze(1).expand_as(dist)
                term = (dist * weight).sum()
                if self.reduction == 'mean':
                    term = term / weight.sum().clamp(min=1)
            else:
                term = dist.sum() if self.reduction == 'sum' else dist.mean()
            total = total + (1.0 if self.module_weights is None else self.module_weights[i]) * term
        if self.reduction == 'mean':
            total = total / len(offsets)
        return self.loss_weight * total
