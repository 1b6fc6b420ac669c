import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from sdnet_plugin.data.flow_io import read_flow
from sdnet_plugin.tools import gopro_flows

VELOCITY = (0.8, -0.5)  # pixels per 240 fps frame
SIZE = (96, 72)


def _texture(seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = cv2.resize(small, (400, 300), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(big, (0, 0), 1.0)


def _frame(texture, k):
    """Frame k of a scene translating by VELOCITY per frame (content at p moves to p + k * VELOCITY)."""
    matrix = np.float32([[1, 0, 150 - VELOCITY[0] * k], [0, 1, 110 - VELOCITY[1] * k]])
    return cv2.warpAffine(texture, matrix, SIZE, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)


def _write(path, rgb):
    os.makedirs(osp.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _fake_gopro(root, seq='GOPR0001_07_00', blurs=4, shift=0, first_index=1, stray=None):
    """GOPRO_Large + GOPRO_Large_all for one sequence; ``shift`` moves every window by that many frames."""
    frames = gopro_flows.frames_per_blur(seq)
    texture = _texture()
    total = (first_index - 1 + blurs) * frames + abs(shift) + frames
    for k in range(1, total + 1):
        _write(osp.join(root, 'GOPRO_Large_all', 'train', seq, f'{k:06d}.png'), _frame(texture, k))
    for n in range(first_index, first_index + blurs):
        start = (n - 1) * frames + 1 + shift
        window = [_frame(texture, k).astype(np.float64) for k in range(start, start + frames)]
        sharp = window[frames // 2]
        if n == stray:
            sharp = _frame(_texture(seed=9), 1).astype(np.float64)  # matches no frame
        folder = osp.join(root, 'GOPRO_Large', 'train', seq)
        _write(osp.join(folder, 'sharp', f'{n:06d}.png'), np.clip(np.round(sharp + 0.4), 0, 255).astype(np.uint8))
        _write(osp.join(folder, 'blur', f'{n:06d}.png'), np.round(np.mean(window, 0)).astype(np.uint8))


def _check_flow(path, frames, tolerance):
    flow = read_flow(path)
    centre = flow[16:-16, 16:-16].reshape(-1, 4)
    before, after = frames // 2, frames - 1 - frames // 2  # frames from the middle to the first / last
    expected = [-before * VELOCITY[0], -before * VELOCITY[1], after * VELOCITY[0], after * VELOCITY[1]]
    assert np.allclose(np.median(centre, 0), expected, atol=tolerance), np.median(centre, 0)


def test_window_arithmetic_matches_the_documented_example():
    # GOPR0372_07_00/000047 averages GOPRO_Large_all frames 000323-000329
    assert gopro_flows.frames_per_blur('GOPR0372_07_00') == 7
    assert gopro_flows.expected_middle(47, 7) == 326
    with pytest.raises(ValueError, match='GOPRxxxx_yy_zz'):
        gopro_flows.frames_per_blur('clip1')


@pytest.mark.parametrize('estimator', ['dis', 'farneback'])
def test_exact_mode_flows(tmp_path, estimator):
    _fake_gopro(str(tmp_path), blurs=2)
    gopro_flows.main([
        '--gopro',
        str(tmp_path / 'GOPRO_Large'), '--gopro-all',
        str(tmp_path / 'GOPRO_Large_all'), '--splits', 'train', '--estimator', estimator
    ])
    report = json.loads((tmp_path / 'GOPRO_Large' / 'train' / 'flow_report.json').read_text())
    assert report['sequences']['GOPR0001_07_00']['matched'] == 2
    for n in (1, 2):
        _check_flow(str(tmp_path / 'GOPRO_Large' / 'train' / 'GOPR0001_07_00' / 'flow' / f'{n:06d}.png'), 7, 0.3)


def test_index_mismatch_is_found_and_unmatched_images_reported(tmp_path, capsys):
    _fake_gopro(str(tmp_path), seq='GOPR0002_09_00', blurs=3, shift=4, stray=3)
    gopro_split = str(tmp_path / 'GOPRO_Large' / 'train')
    tasks, report = gopro_flows.plan_split(gopro_split, str(tmp_path / 'GOPRO_Large_all' / 'train'), progress=False)
    entry = report['sequences']['GOPR0002_09_00']
    assert entry['shifted'] == {'000001': 4, '000002': 4} and list(entry['unmatched']) == ['000003']
    assert [osp.basename(t['middle']) for t in tasks] == ['000009.png', '000018.png']
    assert [osp.basename(t['first']) for t in tasks] == ['000005.png', '000014.png']
    gopro_flows.compute_flows(tasks, workers=2, progress=False)
    _check_flow(osp.join(gopro_split, 'GOPR0002_09_00', 'flow', '000002.png'), 9, 0.3)
    assert not osp.exists(osp.join(gopro_split, 'GOPR0002_09_00', 'flow', '000003.png'))
    # a second run keeps existing flows
    _, again = gopro_flows.plan_split(gopro_split, str(tmp_path / 'GOPRO_Large_all' / 'train'), progress=False)
    assert again['sequences']['GOPR0002_09_00']['existing'] == 2


@pytest.mark.parametrize('seq', ['GOPR0001_07_00', 'GOPR0003_08_00'])
def test_approximate_mode_from_neighbouring_sharp_images(tmp_path, seq):
    _fake_gopro(str(tmp_path), seq=seq, blurs=3)
    gopro_flows.main(['--gopro', str(tmp_path / 'GOPRO_Large'), '--approximate', '--splits', 'train'])
    folder = tmp_path / 'GOPRO_Large' / 'train' / seq / 'flow'
    assert sorted(os.listdir(folder)) == ['000001.png', '000002.png', '000003.png']
    _check_flow(str(folder / '000002.png'), gopro_flows.frames_per_blur(seq), 0.4)
    frames = gopro_flows.frames_per_blur(seq)
    # the ends estimate their one side from their only neighbour and mirror it
    for n, side, expected in ((1, 2, frames - 1 - frames // 2), (3, 0, -(frames // 2))):
        flow = np.median(read_flow(str(folder / f'{n:06d}.png'))[16:-16, 16:-16].reshape(-1, 4), 0)
        assert np.allclose(flow[:2], -flow[2:], atol=1e-3)
        assert np.allclose(flow[side:side + 2], np.multiply(VELOCITY, expected), atol=0.4)


def test_needs_exactly_one_source(tmp_path):
    with pytest.raises(SystemExit, match='--gopro-all, or --approximate'):
        gopro_flows.main(['--gopro', str(tmp_path)])
    with pytest.raises(SystemExit, match='unknown estimator'):
        gopro_flows.main(['--gopro', str(tmp_path), '--approximate', '--estimator', 'raft'])
