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


def _still_camera_scene(size=(96, 96), velocity=6.0):
    scene = synthesis.sample_scene(np.random.default_rng(1), 1, *size)
    scene['background']['motion'].update(velocity=[velocity, 0.0], acceleration=[0.0, 0.0], shake=[],
                                         angular_velocity=0.0, angular_acceleration=0.0, zoom_rate=0.0)
    return scene


def test_fit_scene_cuts_the_largest_window_whose_photo_is_not_upsampled():
    scene = _still_camera_scene()  # the camera moves 6 px each way: margin 8 px, window 112x112
    assert synthesis.fit_scene(scene, (400, 300)) is scene  # large enough: untouched
    assert synthesis.background_scale(scene, (160, 80)) == pytest.approx(112 / 80)
    fitted = synthesis.fit_scene(scene, (160, 80), max_upscale=1.0, min_side=32)
    assert fitted['size'] == [96, 64] and fitted['crop'] == [0, 16] and scene['size'] == [96, 96]
    assert synthesis.background_scale(fitted, (160, 80)) <= 1
    taller = synthesis.crop_scene(scene, 0, 15, 96, 65)  # one row more would need upsampling
    assert synthesis.background_scale(taller, (160, 80)) > 1
    assert synthesis.fit_scene(scene, (160, 80), max_upscale=1.2, min_side=32)['size'] == [96, 80]
    # too small even for min_side: that side stops there, upsampled as little as that allows
    fitted = synthesis.fit_scene(scene, (160, 40), max_upscale=1.0, min_side=48)
    assert fitted['size'] == [96, 48] and synthesis.background_scale(fitted, (160, 40)) == pytest.approx(64 / 40)
    assert synthesis.fit_scene(scene, (160, 40), max_upscale=None) is scene


def test_cropped_scene_renders_the_window_of_the_whole_frame(smooth_photos):
    for scene in _scenes(len(smooth_photos), count=3, size=(96, 80)) + _camera_scenes(
            len(smooth_photos), count=2, size=(96, 80)):
        whole = synthesis.render_scene(scene, smooth_photos)
        window = synthesis.render_scene(synthesis.crop_scene(scene, 20, 12, 56, 48), smooth_photos)
        labels = whole['labels_middle'][12:60, 20:76]
        same = labels == window['labels_middle']
        assert same.mean() > 0.98
        assert np.allclose(window['flow'][same], whole['flow'][12:60, 20:76][same], atol=1e-3)


@pytest.fixture(scope='module')
def small_photo_dir(tmp_path_factory):
    """Smooth photographs smaller than a 96x96 frame plus its motion margins."""
    folder = tmp_path_factory.mktemp('small_photos')
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(160, 84), (130, 90), (150, 100)]):
        image = cv2.GaussianBlur(rng.uniform(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 4)
        cv2.imwrite(str(folder / f'p{i}.png'), np.round(cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)))
    return folder


def test_small_photos_are_never_upsampled_and_flows_stay_exact(small_photo_dir):
    photos = [synthesis.load_photo(str(p)) for p in sorted(small_photo_dir.iterdir())]
    sizes = [(p.shape[1], p.shape[0]) for p in photos]
    cut = 0
    for scene in _scenes(len(photos), count=6, size=(96, 96)):
        fitted = synthesis.fit_scene(scene, sizes[scene['background']['photo']], 1.0, 40)
        cut += fitted['size'] != [96, 96]
        before = synthesis.render_scene(scene, photos)['scales']
        sample = synthesis.render_scene(fitted, photos, return_subframes=True, max_upscale=1.0)
        assert max(sample['scales']) <= 1 < max(before)
        for end, channel in ((0, 0), (-1, 2)):
            mask = _visible_mask(sample, end, channel)
            warped, _ = backward_warp(sample['subframes'][end], sample['flow'][..., channel:channel + 2])
            assert _psnr(warped, sample['sharp'], mask) > 40
    assert cut == 6
    # photos large enough: the limit changes nothing
    scene = _scenes(len(photos), count=1, size=(48, 40))[0]
    unlimited = synthesis.render_scene(scene, photos)
    limited = synthesis.render_scene(
        synthesis.fit_scene(scene, sizes[scene['background']['photo']]), photos, max_upscale=1.0)
    assert max(unlimited['scales']) <= 1 and all(np.array_equal(unlimited[k], limited[k]) for k in ('sharp', 'flow'))


def test_mixed_size_renders_train_through_lmdb(small_photo_dir, tmp_path):
    import torch

    from basicsr.data import build_dataset  # isort: skip
    from sdnet_plugin.data.gopro_layout import create_gopro_lmdb, lmdb_paths
    kwargs = dict(photo_dir=str(small_photo_dir), size=(96, 96), seed=2, blur_scale=0.5, min_side=40, progress=False)
    meta = synthesis.synthesize_dataset(str(tmp_path / 'a'), 6, workers=1, **kwargs)
    synthesis.synthesize_dataset(str(tmp_path / 'b'), 6, workers=2, **kwargs)
    assert meta['options']['max_upscale'] == 1.0 and meta['upsampled_share'] == meta['layer_upsampled_share'] == 0
    assert meta['below_size_share'] == 1 and meta['scale_max'] <= 1
    assert len({tuple(s['size']) for s in meta['samples']}) > 1
    for record in meta['samples']:
        seq, name = record['key'].split('/')
        assert cv2.imread(str(tmp_path / 'a' / seq / 'sharp' / f'{name}.png')).shape[1::-1] == tuple(record['size'])
        for folder in ('blur', 'blur_gamma', 'sharp', 'flow'):
            image = (tmp_path / 'a' / seq / folder / f'{name}.png').read_bytes()
            assert image == (tmp_path / 'b' / seq / folder / f'{name}.png').read_bytes()
    unlimited = synthesis.synthesize_dataset(str(tmp_path / 'c'), 6, max_upscale=None, **kwargs)
    assert unlimited['below_size_share'] == 0 and unlimited['upsampled_share'] == 1
    create_gopro_lmdb(str(tmp_path / 'a'), str(tmp_path / 'lmdb'), 'train', progress=False)
    paths = lmdb_paths(str(tmp_path / 'lmdb'), 'train')
    opt = {
        'name': 'mixed',
        'type': 'BlurSharpFlowDataset',
        'io_backend': {
            'type': 'lmdb'
        },
        'dataroot_lq': paths['blur'],
        'dataroot_gt': paths['sharp'],
        'dataroot_flow': paths['flow']
    }
    val = build_dataset({
        'name': 'disk',
        'type': 'BlurSharpFlowDataset',
        'dataroot': str(tmp_path / 'a'),
        'phase': 'val'
    })
    assert [tuple(val[i]['gt'].shape[:0:-1]) for i in range(len(val))] == [tuple(s['size']) for s in meta['samples']]
    train = build_dataset(dict(opt, phase='train', gt_size=32, use_hflip=True, use_rot=True))
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=6)))
    assert batch['lq'].shape == (6, 3, 32, 32) and batch['flow'].shape == (6, 4, 32, 32)


@pytest.mark.parametrize('offset', [(0.0, 0.0), (0.5, 0.7), (1.0, 1.0)])
def test_layer_texture_covers_its_shape_without_upsampling(offset):
    from sdnet_plugin.data.scene_rendering import _prepare_texture
    photo = np.random.default_rng(0).uniform(0, 1, (60, 80, 3)).astype(np.float32)
    alpha = np.zeros((200, 200), np.float32)
    alpha[120:170, 30:100] = 1  # the shape: 70x50 of a 200x200 window
    texture, (ox, oy), scale = _prepare_texture(photo, True, 200, 200, 1.0, offset, max_upscale=1.0, alpha=alpha)
    assert scale == 1.0 and texture.shape == photo.shape
    assert 0 <= 29 + ox and 101 + ox <= 80 and 0 <= 119 + oy and 171 + oy <= 60  # with the bilinear neighbours
    assert _prepare_texture(photo, True, 200, 200, 1.0, offset)[2] == 200 / 60  # no limit: upsampled to the window
