import cv2
import numpy as np
import pytest

from sdnet_plugin.data import synthesis
from sdnet_plugin.data.flow_utils import backward_warp, reblur
from sdnet_plugin.file_safety import is_temporary


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
    assert not [path for path in tmp_path.iterdir() if is_temporary(path.name)]


def _camera_scenes(num_photos, count=6, size=(80, 64), without=()):
    return [
        synthesis.sample_scene(np.random.default_rng(i), num_photos, *size, realism='camera', without=without)
        for i in range(count)
    ]


def test_camera_realism_keeps_flows_exact(smooth_photos):
    # light sources are sharp points that bilinear resampling cannot follow exactly: left out of this check
    for scene in _camera_scenes(len(smooth_photos), count=4, without=('lights', )):
        sample = synthesis.render_scene(scene, smooth_photos, return_subframes=True)
        assert sample['subframes'].shape[0] == sample['num_subframes'] >= scene['num_subframes']
        assert np.array_equal(sample['sharp'], sample['subframes'][sample['num_subframes'] // 2])
        for end, channel in ((0, 0), (-1, 2)):
            mask = _visible_mask(sample, end, channel)
            warped, _ = backward_warp(sample['subframes'][end], sample['flow'][..., channel:channel + 2])
            assert _psnr(warped, sample['sharp'], mask) > 44


def test_camera_dense_subframes_move_at_most_a_pixel(photos):
    scene = _camera_scenes(len(photos), count=1, without=('exposure', ))[0]
    scene['background']['motion'].update(velocity=[20.0, 0.0], acceleration=[0.0, 0.0], shake=[], path=None)
    sample = synthesis.render_scene(scene, photos)
    assert sample['num_subframes'] >= 41 and sample['num_subframes'] % 2 == 1
    assert np.allclose(sample['flow'][..., 0][sample['labels_middle'] == 0], -20, atol=1e-3)
    scene['camera']['dense'] = False
    assert synthesis.render_scene(scene, photos)['num_subframes'] == scene['num_subframes']


def test_camera_highlights_streak_after_clipping(photos):
    scene = _camera_scenes(len(photos), count=1, without=('noise', 'jpeg', 'handshake', 'exposure'))[0]
    scene['layers'] = []
    scene['background']['motion'].update(velocity=[8.0, 0.0], acceleration=[0.0, 0.0], shake=[], angular_velocity=0.0,
                                         zoom_rate=0.0)
    scene['camera'].update(lights=[{'centre': [40.0, 32.0], 'sigma': 1.0, 'rgb': [30.0, 30.0, 30.0]}])
    sample = synthesis.render_scene(scene, photos, return_subframes=True)
    assert sample['sharp'][32, 40].min() == 1.0  # saturated in the sharp frame
    clipped_first = (sample['subframes']**synthesis.GAMMA).mean(0)**(1 / synthesis.GAMMA)  # clip, then average
    streak = (32, slice(33, 48))
    assert (sample['blur'][streak] - clipped_first[streak]).max() > 0.2  # a streak as bright as a real light's
    assert np.allclose(sample['blur'], sample['blur_gamma'])  # noise and JPEG off
    scene['camera'].update(lights=[], highlight_gain=1.0)  # nothing above white: clipping order no longer matters
    sample = synthesis.render_scene(scene, photos, return_subframes=True)
    assert np.allclose(sample['blur'], (sample['subframes']**synthesis.GAMMA).mean(0)**(1 / synthesis.GAMMA), atol=2e-3)


def test_camera_noise_is_signal_dependent_and_jpeg_quantizes(photos):
    scene = _camera_scenes(len(photos), count=1, without=('jpeg', ), size=(160, 128))[0]
    scene['camera']['noise'] = {'shot': 4e-3, 'read': 1e-5, 'seed': 7}
    sample = synthesis.render_scene(scene, photos)
    clean = sample['blur_gamma']**synthesis.GAMMA
    residual = sample['blur']**synthesis.GAMMA - clean
    inside = (clean > 0.02) & (clean < 0.98)
    for low, high in ((0.03, 0.08), (0.3, 0.6)):
        band = inside & (clean >= low) & (clean < high)
        if band.sum() > 200:
            expected = np.sqrt(4e-3 * clean[band] + 1e-5).mean()
            assert 0.75 < residual[band].std() / expected < 1.25
    again = synthesis.render_scene(scene, photos)
    assert np.array_equal(sample['blur'], again['blur'])  # deterministic for the scene
    scene['camera'].update(noise=None, jpeg_quality=75)
    compressed = synthesis.render_scene(scene, photos)['blur']
    assert np.array_equal(np.round(compressed * 255), compressed * 255)
    assert 28 < _psnr(compressed, sample['blur_gamma']) < 60


def test_camera_handshake_paths_curve_and_exposures_mix(photos):
    scenes = _camera_scenes(len(photos), count=30, size=(128, 128))
    paths = [s['background']['motion'] for s in scenes if s['background']['motion'].get('path')]
    assert 10 < len(paths) < 30
    curved = 0
    for motion in paths:
        assert np.allclose(synthesis.motion_matrix(motion, 0.0), np.eye(3))
        track = np.array([synthesis.motion_matrix(motion, t)[:2, 2] for t in np.linspace(-1, 1, 33)])
        chord = track[-1] - track[0]
        normal = np.array([-chord[1], chord[0]]) / max(np.linalg.norm(chord), 1e-6)
        curved += np.abs((track - track[0]) @ normal).max() > 1.0
    assert curved >= len(paths) // 2
    exposures = [s['camera']['exposure'] for s in scenes]
    assert min(exposures) < 0.7 and max(exposures) > 1.3
    assert {bool(s['camera']['noise']) for s in scenes} == {True, False}
    assert len({s['camera']['jpeg_quality'] for s in scenes}) > 5
    assert all(s['camera']['exposure'] == 1.0 for s in _camera_scenes(len(photos), count=5, without=('exposure', )))
    with pytest.raises(ValueError, match='unknown camera features'):
        synthesis.sample_scene(np.random.default_rng(0), 3, 64, 64, realism='camera', without=('blur', ))


def test_camera_dataset_is_deterministic_for_any_workers(tmp_path):
    kwargs = dict(size=(48, 40), seed=2, progress=False, realism='camera')
    meta = synthesis.synthesize_dataset(str(tmp_path / 'a'), 3, workers=1, **kwargs)
    synthesis.synthesize_dataset(str(tmp_path / 'b'), 3, workers=2, **kwargs)
    assert meta['options']['realism'] == 'camera' and 'exposure' in meta['samples'][0]
    for path in (tmp_path / 'a').rglob('*.png'):
        assert path.read_bytes() == (tmp_path / 'b' / path.relative_to(tmp_path / 'a')).read_bytes()
