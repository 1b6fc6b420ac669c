import cv2
import numpy as np
import pytest

from sdnet_plugin.data import synthesis
from sdnet_plugin.data.flow_utils import backward_warp, reblur


def _psnr(a, b, mask=None):
    err = (a - b)**2
    err = err[mask] if mask is not None else err
    return 10 * np.log10(1 / max(float(err.mean()), 1e-12))


@pytest.fixture(scope='module')
def photos():
    return [synthesis.load_photo(p) for p in synthesis.default_photo_paths()]


@pytest.fixture(scope='module')
def smooth_photos(photos):
    # smooth textures make bilinear resampling nearly exact, so any flow error shows
    return [cv2.GaussianBlur(p, (0, 0), 8) for p in photos]


def _scenes(num_photos, count=6, size=(80, 64)):
    return [synthesis.sample_scene(np.random.default_rng(i), num_photos, *size) for i in range(count)]


def _visible_mask(sample, end, flow_channel):
    """Pixels whose surface is also the one seen at the warped position in the end sub-frame, away from edges."""
    disp = sample['flow'][..., flow_channel:flow_channel + 2]
    label_end, inside = backward_warp(sample['labels'][end].astype(np.float32), disp)
    same = inside & (np.abs(label_end - sample['labels_middle']) < 1e-3)
    return cv2.erode(same.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def test_exact_flow_reproduces_first_and_last_subframes(smooth_photos):
    occluded_somewhere = False
    for scene in _scenes(len(smooth_photos)):
        sample = synthesis.render_scene(scene, smooth_photos, return_subframes=True)
        assert sample['subframes'].shape[0] == scene['num_subframes']
        for end, channel in ((0, 0), (-1, 2)):
            mask = _visible_mask(sample, end, channel)
            assert mask.mean() > 0.4
            occluded_somewhere |= bool((mask == 0).any() and scene['layers'])
            warped, _ = backward_warp(sample['subframes'][end], sample['flow'][..., channel:channel + 2])
            exact = _psnr(warped, sample['sharp'], mask)
            assert exact > 44, exact
            # a flow off by one pixel must be clearly worse, or the check above could not fail
            shifted, _ = backward_warp(sample['subframes'][end], sample['flow'][..., channel:channel + 2] + 1.0)
            if np.abs(sample['flow']).max() > 2:
                assert _psnr(shifted, sample['sharp'], mask) < exact - 3
    assert occluded_somewhere


def test_reblur_explains_blur_much_better_than_identity(photos):
    gains = []
    for scene in _scenes(len(photos), count=8):
        sample = synthesis.render_scene(scene, photos)
        for key, gamma in (('blur', None), ('blur_gamma', synthesis.GAMMA)):
            reblurred = reblur(sample['sharp'], sample['flow'], gamma=gamma)
            gains.append(_psnr(reblurred, sample[key]) - _psnr(sample['sharp'], sample[key]))
    assert min(gains) > 0
    assert np.mean(gains) > 8


def test_gamma_and_linear_averages(photos):
    scene = _scenes(len(photos), count=1)[0]
    sample = synthesis.render_scene(scene, photos, return_subframes=True)
    frames = sample['subframes']
    assert np.allclose(sample['blur'], frames.mean(0), atol=1e-5)
    assert np.allclose(sample['blur_gamma'], (frames**2.2).mean(0)**(1 / 2.2), atol=1e-4)
    assert np.array_equal(sample['sharp'], frames[len(frames) // 2])


def test_scenes_are_deterministic_and_varied():
    a = synthesis.sample_scene(np.random.default_rng(3), 10, 64, 64)
    b = synthesis.sample_scene(np.random.default_rng(3), 10, 64, 64)
    c = synthesis.sample_scene(np.random.default_rng(4), 10, 64, 64)
    assert a == b and a != c
    scenes = _scenes(10, count=40)
    assert {s['num_subframes'] for s in scenes} == set(synthesis.SUBFRAME_CHOICES)
    assert max(len(s['layers']) for s in scenes) >= 2 and min(len(s['layers']) for s in scenes) == 0


def test_photo_split_is_disjoint_and_complete():
    paths = [f'/photos/p{i}.png' for i in range(12)]
    train = synthesis.split_photos(paths, 'train')
    val = synthesis.split_photos(paths, 'val')
    assert not set(train) & set(val) and sorted(train + val) == sorted(paths)
    assert 1 <= len(val) <= 4
    # adding photos does not move existing ones between splits
    assert set(val) <= set(synthesis.split_photos(paths + ['/photos/extra.png'], 'val')) | {'/photos/extra.png'}
    with pytest.raises(ValueError):
        synthesis.split_photos(paths[:1], 'val')


def test_synthesize_dataset_layout_and_determinism(tmp_path):
    kwargs = dict(size=(48, 40), seed=5, progress=False)
    meta = synthesis.synthesize_dataset(str(tmp_path / 'a'), 3, workers=1, **kwargs)
    synthesis.synthesize_dataset(str(tmp_path / 'b'), 3, workers=2, **kwargs)
    for key in [s['key'] for s in meta['samples']]:
        seq, name = key.split('/')
        for folder in ('blur', 'blur_gamma', 'sharp', 'flow'):
            a = (tmp_path / 'a' / seq / folder / f'{name}.png').read_bytes()
            assert a == (tmp_path / 'b' / seq / folder / f'{name}.png').read_bytes()
    assert sum(meta['histogram']['counts']) == 3 * 48 * 40
    with pytest.raises(FileExistsError):
        synthesis.synthesize_dataset(str(tmp_path / 'a'), 1, **kwargs)
    synthesis.synthesize_dataset(str(tmp_path / 'a'), 1, overwrite=True, **kwargs)
    assert len(list((tmp_path / 'a').glob('*/sharp/*.png'))) == 1
    assert not (tmp_path / 'a.partial').exists()
