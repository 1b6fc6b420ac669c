"""Sampling-point pictures (sdnet_plugin/visualize.py)."""
import cv2
import numpy as np
import pytest
import torch

from sdnet_plugin.losses.flow_offset_loss import flow_to_offsets
from sdnet_plugin.visualize import blur_axes, color_wheel, flow_to_color, render_offset_picture


@pytest.mark.parametrize('kernel_size, dilation, stride', [(3, 1, 1), (3, 2, 2), (5, 1, 4)])
def test_blur_axes_recover_linear_motion_and_ignore_the_regular_grid(kernel_size, dilation, stride):
    torch.manual_seed(0)
    # linear motion (last = -first), constant over each stride x stride cell so area averaging keeps it exactly
    half = torch.randn(2, 2, 5, 6) * 6
    cells = torch.cat((-half, half), dim=1)
    flow = cells.repeat_interleave(stride, dim=2).repeat_interleave(stride, dim=3)
    axes = blur_axes(flow_to_offsets(flow, kernel_size, dilation, stride), kernel_size, dilation, stride)
    same_sign = (axes * half).sum(1, keepdim=True).sign()  # the axis has no direction
    assert torch.allclose(axes * same_sign, half, atol=1e-3)
    grid = blur_axes(torch.zeros(1, 2 * kernel_size**2, 3, 4), kernel_size, dilation, stride)
    assert torch.allclose(grid, torch.zeros_like(grid), atol=1e-6)  # a square grid has no preferred direction


def test_flow_colours_show_direction_and_length():
    motion = np.zeros((2, 3, 2), np.float32)
    motion[0, 0] = (8, 0)  # right
    motion[0, 1] = (0, 8)  # down
    motion[0, 2] = (4, 0)  # right, half as long
    colors, max_magnitude = flow_to_color(motion, max_magnitude=8)
    assert max_magnitude == 8
    assert colors[1, 0].tolist() == [255, 255, 255]  # no motion is white
    b, g, r = colors[0, 0].astype(int)
    assert r == 255 and b < 10 and g < 10  # hue 0: red
    assert not np.array_equal(colors[0, 1], colors[0, 0])
    assert colors[0, 2, 0] > colors[0, 0, 0] and colors[0, 2, 2] == 255  # same hue, paler
    wheel = color_wheel(21)
    assert wheel.shape == (21, 21, 3) and wheel[0, 0].tolist() == [0, 0, 0] and wheel[10, 10].tolist() == [255] * 3
    axial, _ = flow_to_color(np.concatenate((motion, -motion), axis=1), max_magnitude=8, axial=True)
    assert np.array_equal(axial[:, :3], axial[:, 3:])  # v and -v: the same axis, the same colour
    assert not np.array_equal(axial[0, 0], axial[0, 1])  # horizontal and vertical differ


def test_picture_draws_the_trajectories_along_the_motion():
    height, width, stride = 64, 96, 2
    flow = torch.zeros(1, 4, height, width)
    flow[:, 0], flow[:, 2] = -6, 6  # horizontal blur, 12 px long
    offsets = flow_to_offsets(flow, 3, 1, stride)
    image = np.full((height, width, 3), 128, np.uint8)
    picture = render_offset_picture(image, offsets, 3, 1, stride, num_anchors=4)
    assert picture.shape == (height, 2 * width, 3) and picture.dtype == np.uint8
    left, right = picture[:, :width], picture[:, width:]
    drawn = np.abs(left.astype(int) - 76).sum(-1) > 30  # pixels that differ from the dimmed image
    # anchors every 24 px from (12, 12); the first one's points run from x = 6 to x = 18 on row 12
    assert drawn[12, 6:19].all() and not drawn[12, 21:27].any()
    assert not drawn[3:9, 12].any() and not drawn[16:22, 12].any()
    hsv = cv2.cvtColor(right[height // 2:height // 2 + 1, :width // 2], cv2.COLOR_BGR2HSV)
    assert (hsv[..., 0] < 5).all() and (hsv[..., 1] > 200).all()  # horizontal axis, full colour


def test_picture_of_a_tiny_image():
    offsets = torch.zeros(1, 18, 2, 2)
    picture = render_offset_picture(np.zeros((5, 7, 3), np.uint8), offsets, stride=4)
    assert picture.shape == (5, 14, 3)
    assert (picture[:, 7:] == 255).all()  # the untrained kernel's regular grid shows no blur
