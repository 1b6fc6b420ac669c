import itertools

import numpy as np
import pytest

from sdnet_plugin.data.flow_utils import backward_warp, blur_extent, flip_transpose_flow, flip_transpose_image, reblur


def _ramp(h=20, w=30):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs / w, ys / h, (xs + ys) / (w + h)], -1)


def test_backward_warp_integer_shift():
    img = _ramp()
    disp = np.zeros(img.shape[:2] + (2, ), np.float32)
    disp[..., 0] = 2  # sample two pixels to the right
    warped, inside = backward_warp(img, disp)
    assert np.allclose(warped[:, :-2], img[:, 2:], atol=1e-6)
    assert inside[:, :-2].all() and not inside[:, -2:].any()


def test_blur_extent():
    flow = np.zeros((1, 1, 4), np.float32)
    flow[0, 0] = [3, 4, -6, 8]
    assert blur_extent(flow)[0, 0] == pytest.approx(15)


def test_reblur_of_uniform_translation_is_a_box_filter():
    img = np.zeros((9, 41, 1), np.float32)
    img[:, 20] = 1
    flow = np.zeros((9, 41, 4), np.float32)
    flow[..., 0], flow[..., 2] = -4, 4  # the point moves from x-4 to x+4 over the exposure
    out = reblur(img, flow, samples_per_side=4)[4, :, 0]
    assert np.allclose(out[16:25], 1 / 9, atol=1e-6)
    assert np.allclose(out[:16], 0) and np.allclose(out[25:], 0)


@pytest.mark.parametrize('hflip,vflip,transpose', list(itertools.product([False, True], repeat=3)))
def test_flips_keep_flow_consistent(hflip, vflip, transpose):
    """Warping a transformed image with the transformed flow equals transforming the warped image."""
    rng = np.random.default_rng(1)
    img = _ramp()
    flow = np.zeros(img.shape[:2] + (4, ), np.float32)
    flow[...] = rng.integers(-2, 3, 4)  # constant integer motion: warps are exact
    ref, _ = backward_warp(img, flow[..., 2:])
    ref = flip_transpose_image(ref, hflip, vflip, transpose)
    img_t = flip_transpose_image(img, hflip, vflip, transpose)
    flow_t = flip_transpose_flow(flow, hflip, vflip, transpose)
    out, inside = backward_warp(img_t, flow_t[..., 2:])
    ref_inside = flip_transpose_image(backward_warp(img, flow[..., 2:])[1][..., None], hflip, vflip, transpose)[..., 0]
    assert np.array_equal(inside, ref_inside)
    assert np.allclose(out[inside], ref[inside], atol=1e-5)
