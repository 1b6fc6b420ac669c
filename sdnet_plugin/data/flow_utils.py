"""NumPy helpers for bi-directional exposure flows ``(H, W, 4)`` = ``(u_first, v_first, u_last, v_last)`` in pixels.

They implement the physics the project relies on: warping with a flow, re-blurring a sharp image along its flows,
the blur extent, and flips/transposes that keep (image, flow) pairs consistent.
"""
import cv2
import numpy as np


def backward_warp(image, displacement, border_value=0.0):
    """Sample ``image`` at ``p + displacement(p)`` (bilinear).

    Args:
        image (ndarray): ``(H, W)`` or ``(H, W, C)`` float image.
        displacement (ndarray): ``(H, W, 2)`` = ``(u, v)`` in pixels.
        border_value (float): Value for samples outside the image. Default: 0.

    Returns:
        tuple[ndarray, ndarray]: The warped image (same shape as ``image``) and a bool ``(H, W)`` mask of samples
        that fall inside the image.
    """
    h, w = displacement.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = grid_x + displacement[..., 0].astype(np.float32)
    map_y = grid_y + displacement[..., 1].astype(np.float32)
    warped = cv2.remap(
        image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def blur_extent(flow):
    """Length in pixels of the two-segment blur trajectory first -> middle -> last at every pixel, ``(H, W)``."""
    return np.hypot(flow[..., 0], flow[..., 1]) + np.hypot(flow[..., 2], flow[..., 3])


def reblur(sharp, flow, samples_per_side=None, gamma=None):
    """Re-synthesise a blurry image from the sharp middle frame and its exposure flows.

    The scene point seen at ``p`` at exposure time ``t`` is, to first order, the one the sharp frame shows at
    ``p - F_t(p)``, where ``F_t`` interpolates linearly from ``0`` at the middle to ``F_first`` / ``F_last`` at the
    ends. Averaging those samples over the exposure gives the blurry image.

    Args:
        sharp (ndarray): ``(H, W, C)`` float image in ``[0, 1]``.
        flow (ndarray): ``(H, W, 4)`` exposure flow in pixels.
        samples_per_side (int | None): Time samples on each side of the middle. Default: None, one per pixel of the
            largest displacement (at least 3).
        gamma (float | None): Average in linear light after inverting this gamma (GoPro's ``blur_gamma``).
            Default: None, plain average (GoPro's ``blur``).

    Returns:
        ndarray: ``(H, W, C)`` float32 re-blurred image.
    """
    if samples_per_side is None:
        max_disp = float(np.abs(flow).max()) if flow.size else 0.0
        samples_per_side = max(3, int(np.ceil(max_disp)))
    image = sharp.astype(np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if gamma is not None:
        image = np.power(np.clip(image, 0, 1), gamma)
    total = np.zeros_like(image)
    weight = np.zeros(image.shape[:2] + (1, ), np.float32)
    # the middle (t = 0) is shared by both halves: the last half starts at its first step
    for ends, first_step in ((flow[..., 0:2], 0), (flow[..., 2:4], 1)):
        for step in range(first_step, samples_per_side + 1):
            warped, inside = backward_warp(image, -(step / samples_per_side) * ends)
            inside = inside[..., None].astype(np.float32)
            total += warped.reshape(image.shape) * inside
            weight += inside
    # samples that leave the image are dropped, not counted as black
    blurred = np.where(weight > 0, total / np.maximum(weight, 1e-6), image)
    if gamma is not None:
        blurred = np.power(np.clip(blurred, 0, 1), 1.0 / gamma)
    return blurred.reshape(sharp.shape).astype(np.float32)


def flip_transpose_flow(flow, hflip=False, vflip=False, transpose=False):
    """Apply a horizontal flip, a vertical flip and a transpose (in that order) to an exposure flow.

    A horizontal flip mirrors the field and negates every u, a vertical flip negates every v, a transpose swaps
    u and v (it exchanges the x and y axes).
    """
    if hflip:
        flow = flow[:, ::-1] * np.array([-1, 1, -1, 1], np.float32)
    if vflip:
        flow = flow[::-1] * np.array([1, -1, 1, -1], np.float32)
    if transpose:
        flow = flow.transpose(1, 0, 2)[..., [1, 0, 3, 2]]
    return np.ascontiguousarray(flow, dtype=np.float32)


def flip_transpose_image(image, hflip=False, vflip=False, transpose=False):
    """The same geometric transform as :func:`flip_transpose_flow`, for an ``(H, W, C)`` image."""
    if hflip:
        image = image[:, ::-1]
    if vflip:
        image = image[::-1]
    if transpose:
        image = image.transpose(1, 0, 2)
    return np.ascontiguousarray(image)
