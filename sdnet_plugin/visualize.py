"""Pictures of the blur an SDNet has estimated: where each SVD module's deformable kernel samples.

With flow-guided training the K sampling points of a kernel lie along the blur trajectory through their pixel
(see :func:`sdnet_plugin.losses.flow_to_offsets`). The principal axis of each pixel's points is the network's own
estimate of the blur there: its direction (either way, as a blurry image does not tell which way the scene moved)
and its extent, drawn as a colour map (hue = axis, saturation = extent) next to the blurry image with the sampling
points of a sparse grid of pixels over it. Points that spread with no preferred direction, such as the regular grid
of an untrained kernel, show no blur (white).

:func:`plot_blur_histogram` draws the blur-extent distribution of a synthetic dataset (``synthesis.json``).
"""
import math
import os
from os import path as osp

import cv2
import numpy as np
import torch

__all__ = [
    'sampling_points', 'blur_axes', 'flow_to_color', 'color_wheel', 'render_offset_picture', 'plot_blur_histogram'
]


def sampling_points(offset, kernel_size=3, dilation=1, stride=1):
    """Positions of the K sampling points relative to their output pixel, in input pixels.

    Args:
        offset (Tensor): ``(B, 2K, h, w)`` DCN offsets (interleaved ``(dy, dx)``, raster order) in level pixels.
        kernel_size (int): Kernel size k, K = k * k. Default: 3.
        dilation (int): Kernel dilation. Default: 1.
        stride (int): Stride of the level relative to the input. Default: 1.

    Returns:
        Tensor: ``(B, K, 2, h, w)`` displacements ``(dy, dx)`` in input pixels.
    """
    b, _, h, w = offset.shape
    num_points = kernel_size * kernel_size
    j = torch.arange(num_points, device=offset.device)
    grid_y = ((j // kernel_size).to(offset) - (kernel_size - 1) / 2) * dilation
    grid_x = ((j % kernel_size).to(offset) - (kernel_size - 1) / 2) * dilation
    grid = torch.stack((grid_y, grid_x), dim=1).view(1, num_points, 2, 1, 1)
    return (offset.view(b, num_points, 2, h, w) + grid) * stride


def blur_axes(offset, kernel_size=3, dilation=1, stride=1):
    """Blur axis along which each pixel's sampling points spread (principal component of the K points).

    The vector lies along the points' main direction; its length is the half extent of K equally spaced points
    with the same variance (exact for points on a segment, as ``flow_to_offsets`` places them for linear motion),
    times the anisotropy ``(l1 - l2) / (l1 + l2)`` of the two variances, so that isotropic clouds count as no blur.
    The sign is arbitrary.

    Args:
        offset (Tensor): ``(B, 2K, h, w)`` DCN offsets in level pixels.
        kernel_size (int): Default: 3.
        dilation (int): Default: 1.
        stride (int): Default: 1.

    Returns:
        Tensor: ``(B, 2, h, w)`` vectors ``(u, v)`` in input pixels.
    """
    num_points = kernel_size * kernel_size
    points = sampling_points(offset, kernel_size, dilation, stride).double()  # (B, K, 2, h, w), (dy, dx)
    centred = points - points.mean(1, keepdim=True)
    var_y, var_x = centred[:, :, 0].square().mean(1), centred[:, :, 1].square().mean(1)
    cov = (centred[:, :, 0] * centred[:, :, 1]).mean(1)
    # eigen-decomposition of the 2x2 covariance [[var_x, cov], [cov, var_y]] in closed form
    half_trace, half_gap = (var_x + var_y) / 2, torch.sqrt(((var_x - var_y) / 2).square() + cov.square())
    major, minor = half_trace + half_gap, half_trace - half_gap
    angle = 0.5 * torch.atan2(2 * cov, var_x - var_y)
    anisotropy = torch.where(major > 1e-12, (major - minor) / (major + minor).clamp(min=1e-12), 0.0)
    half_extent = torch.sqrt(3 * major.clamp(min=0) * (num_points - 1) / (num_points + 1)) * anisotropy
    return torch.stack((half_extent * torch.cos(angle), half_extent * torch.sin(angle)), dim=1).to(offset.dtype)


def flow_to_color(motion, max_magnitude=None, axial=False):
    """Flow-colour map: hue = direction, saturation = length (white = no motion).

    Args:
        motion (ndarray): ``(H, W, 2)`` vectors ``(u, v)`` in pixels.
        max_magnitude (float | None): Length drawn fully saturated. Default: the 99th percentile length.
        axial (bool): Colour the axis, not the direction: ``v`` and ``-v`` get the same hue. Default: False.

    Returns:
        tuple[ndarray, float]: ``(H, W, 3)`` uint8 BGR picture and the ``max_magnitude`` used.
    """
    magnitude, angle = cv2.cartToPolar(motion[..., 0].astype(np.float32), motion[..., 1].astype(np.float32),
                                       angleInDegrees=True)
    if max_magnitude is None:
        max_magnitude = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    max_magnitude = max(max_magnitude, 1e-6)
    hsv = np.empty(motion.shape[:2] + (3, ), np.uint8)
    if axial:
        angle = (2 * angle) % 360
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV's 8-bit hue spans 0..180
    hsv[..., 1] = np.clip(magnitude / max_magnitude * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), max_magnitude


def color_wheel(size, axial=False):
    """Legend of :func:`flow_to_color`: a disc whose colours are the vectors from its centre (``(size, size, 3)``)."""
    coords = np.arange(size, dtype=np.float32) - (size - 1) / 2
    u, v = np.meshgrid(coords, coords)
    wheel, _ = flow_to_color(np.stack((u, v), axis=-1), max_magnitude=size / 2, axial=axial)
    wheel[np.hypot(u, v) > size / 2] = 0
    return wheel


def render_offset_picture(image, offset, kernel_size=3, dilation=1, stride=1, num_anchors=16, max_magnitude=None):
    """Picture of one SVD module's sampling points: blurry image with sparse trajectories | blur-axis colour map.

    Args:
        image (ndarray): ``(H, W, 3)`` uint8 BGR blurry image.
        offset (Tensor): ``(1, 2K, ceil(H/stride), ceil(W/stride))`` offsets of the module, in level pixels.
        kernel_size (int): Default: 3.
        dilation (int): Default: 1.
        stride (int): Default: 1.
        num_anchors (int): Pixels drawn along the longer side. Default: 16.
        max_magnitude (float | None): Half blur extent drawn fully saturated. Default: 99th percentile.

    Returns:
        ndarray: ``(H, 2W, 3)`` uint8 BGR picture.
    """
    height, width = image.shape[:2]
    offset = offset.detach().float().cpu()
    axes = blur_axes(offset, kernel_size, dilation, stride)[0].permute(1, 2, 0).numpy()
    # nearest: linear interpolation between v and -v (the same axis) would fade to white
    axes = cv2.resize(axes, (width, height), interpolation=cv2.INTER_NEAREST)
    colors, max_magnitude = flow_to_color(axes, max_magnitude, axial=True)

    overlay = (image.astype(np.float32) * 0.6).astype(np.uint8)
    points = sampling_points(offset, kernel_size, dilation, stride)[0].numpy()  # (K, 2, h, w)
    spacing = max(1.0, max(height, width) / num_anchors)
    scale = max(1, round(max(height, width) / 512))  # line width that stays visible on large pictures
    for y in np.arange(spacing / 2, height, spacing):
        for x in np.arange(spacing / 2, width, spacing):
            cy, cx = min(int(y) // stride, points.shape[2] - 1), min(int(x) // stride, points.shape[3] - 1)
            # the level's pixel (cy, cx) sits on input pixel (cy * stride, cx * stride)
            pts = np.stack((cx * stride + points[:, 1, cy, cx], cy * stride + points[:, 0, cy, cx]), axis=-1)
            color = tuple(int(c) for c in colors[min(int(y), height - 1), min(int(x), width - 1)])
            cv2.polylines(overlay, [np.round(pts).astype(np.int32)], False, color, scale, cv2.LINE_AA)
            for px, py in pts:
                cv2.circle(overlay, (int(round(px)), int(round(py))), scale, (255, 255, 255), -1, cv2.LINE_AA)

    wheel_size = max(8, min(height, width) // 5)
    if wheel_size <= min(height, width):
        wheel = color_wheel(wheel_size, axial=True)
        corner = colors[:wheel_size, width - wheel_size:]
        inside = wheel.any(axis=-1)
        corner[inside] = wheel[inside]
    label = f'full colour: blur +-{max_magnitude:.1f} px'
    font_scale = max(0.3, min(height, width) / 600)
    if height >= 24:
        cv2.putText(colors, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                    max(1, math.ceil(font_scale)), cv2.LINE_AA)
    return np.concatenate((overlay, colors), axis=1)


def plot_blur_histogram(meta, path, title=None):
    """Save the per-pixel blur-extent histogram of a synthesis run (``synthesis.json`` content) as an image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    counts = np.asarray(meta['histogram']['counts'], np.float64)
    bin_px = meta['histogram']['bin_px']
    edges = np.arange(len(counts) + 1) * bin_px
    last = int(np.nonzero(counts)[0].max()) + 2 if counts.any() else len(counts)
    fraction = counts / max(counts.sum(), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.bar(edges[:last], fraction[:last] * 100, width=bin_px, align='edge', color='#4477aa')
    cumulative = np.cumsum(fraction)
    median = float(edges[np.searchsorted(cumulative, 0.5) + 1])
    p95 = float(edges[np.searchsorted(cumulative, 0.95) + 1])
    ax.axvline(median, color='k', ls='--', lw=1, label=f'median {median:.0f} px')
    ax.axvline(p95, color='#cc6677', ls='--', lw=1, label=f'95th percentile {p95:.0f} px')
    ax.set_xlabel('blur extent |F_first| + |F_last| per pixel (px)')
    ax.set_ylabel('pixels (%)')
    ax.set_title(title or 'Synthetic blur extent distribution')
    ax.legend()
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_training_curve(rows, path, title=None):
    """Save held-out PSNR and SSIM gain against training CPU-hours (rows of
    :func:`sdnet_plugin.evaluation.heldout_curve`) as an image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    hours = [row['cpu_hours'] for row in rows]
    fig, (psnr_ax, ssim_ax) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for ax, key, unit in ((psnr_ax, 'psnr', 'dB'), (ssim_ax, 'ssim', '')):
        ax.plot(hours, [row['gain'][key] for row in rows], 'o-', color='#4477aa')
        ax.axhline(0, color='k', lw=0.8)
        ax.set_xlabel('training CPU-hours')
        ax.set_ylabel(f'held-out {key.upper()} gain {unit}'.strip())
        ax.grid(alpha=0.3)
    fig.suptitle(title or 'Held-out gain over the blurry input')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
