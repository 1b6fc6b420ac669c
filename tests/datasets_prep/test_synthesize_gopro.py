import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sdnet_plugin.data.flow_io import read_flow
from sdnet_plugin.file_safety import is_temporary
from sdnet_plugin.tools import synthesize_gopro

WRAPPER = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', 'datasets_prep', 'synthesize_gopro.py'))


@pytest.mark.parametrize('command', [[WRAPPER], ['-m', 'sdnet_plugin.tools.synthesize_gopro']],
                         ids=['datasets_prep', 'module'])
def test_script_runs_from_another_folder(tmp_path, command):
    out = tmp_path / 'syn'
    subprocess.run([sys.executable, *command, '--out',
                    str(out), '--count', '2', '--size', '40x32', '--seed', '1'], cwd=str(tmp_path), check=True,
                   capture_output=True)
    seqs = [d for d in os.listdir(out) if osp.isdir(out / d)]
    assert len(seqs) == 1
    for folder in ('blur', 'blur_gamma', 'sharp', 'flow'):
        assert sorted(os.listdir(out / seqs[0] / folder)) == ['000000.png', '000001.png']
    assert cv2.imread(str(out / seqs[0] / 'sharp' / '000001.png')).shape == (32, 40, 3)
    assert read_flow(str(out / seqs[0] / 'flow' / '000001.png')).shape == (32, 40, 4)
    assert json.loads((out / 'synthesis.json').read_text())['options']['seed'] == 1


def test_photo_folder_split_overwrite_and_histogram(tmp_path):
    photos = tmp_path / 'photos' / 'nested'
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(str(photos / f'p{i}.jpg'), cv2.resize(small, (96, 72), interpolation=cv2.INTER_CUBIC))
    out = tmp_path / 'out'
    args = ['--out', str(out), '--count', '3', '--size', '32x32', '--photos', str(tmp_path / 'photos')]
    synthesize_gopro.main(args + ['--split', 'val', '--histogram', str(tmp_path / 'hist.png')])
    used = json.loads((out / 'synthesis.json').read_text())['options']['photos']
    assert len(used) == 1 and used[0].startswith('nested/')
    assert cv2.imread(str(tmp_path / 'hist.png')) is not None
    with pytest.raises(SystemExit, match='exists; pass --overwrite'):
        synthesize_gopro.main(args)
    synthesize_gopro.main(args + ['--overwrite', '--split', 'train'])
    train_used = json.loads((out / 'synthesis.json').read_text())['options']['photos']
    assert len(train_used) == 4 and not set(train_used) & set(used)
    (tmp_path / 'no_photos').mkdir()
    with pytest.raises(SystemExit, match='no images'):
        synthesize_gopro.main(['--out', str(tmp_path / 'x'), '--count', '1', '--photos', str(tmp_path / 'no_photos')])
    assert not (tmp_path / 'x').exists()


def _previous_output(tmp_path):
    out = tmp_path / 'syn'
    synthesize_gopro.main(['--out', str(out), '--count', '1', '--size', '32x32'])
    return out


@pytest.mark.parametrize(
    'case',
    ['unrelated folder', 'extra file', 'extra file in a sequence', 'extra file among images', 'holds the photos'])
def test_overwrite_replaces_only_a_previous_output(tmp_path, case):
    photos = None
    if case == 'unrelated folder':
        out = tmp_path / 'home'
        out.mkdir()
        (out / 'thesis.tex').write_text('years of work')
    else:
        out = _previous_output(tmp_path)
        if case == 'extra file':
            (out / 'notes.txt').write_text('keep me')
        elif case == 'extra file in a sequence':
            next(p for p in out.iterdir() if p.is_dir()).joinpath('mine').mkdir()
        elif case == 'extra file among images':
            next(p for p in out.iterdir() if p.is_dir()).joinpath('blur', 'mine.txt').write_text('keep me')
        else:
            photos = out / 'photos'
            photos.mkdir()
            for i in range(2):
                cv2.imwrite(str(photos / f'p{i}.png'), np.full((40, 40, 3), 60 * i, np.uint8))
    before = sorted(str(p.relative_to(out)) for p in out.rglob('*'))
    args = ['--out', str(out), '--count', '1', '--size', '32x32', '--overwrite']
    with pytest.raises(SystemExit, match=f'error: refusing to replace {out}'):
        synthesize_gopro.main(args + (['--photos', str(photos)] if photos else []))
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*')) == before
    assert not [name for name in os.listdir(out.parent) if is_temporary(name)]


def test_overwrite_replaces_a_previous_output(tmp_path):
    out = _previous_output(tmp_path)
    synthesize_gopro.main(['--out', str(out), '--count', '2', '--size', '32x32', '--overwrite'])
    assert len(json.loads((out / 'synthesis.json').read_text())['samples']) == 2


@pytest.mark.parametrize('option, value, message', [
    ('--blur-scale', 'nan', 'blur scale must be a finite number >= 0, got nan'),
    ('--blur-scale', '-1', 'blur scale must be a finite number >= 0'),
    ('--max-blur', '3000', r'max blur must be in \(0, 256\] px, got 3000.0: flows reach up to about 1.6x'),
    ('--max-blur', 'inf', r'max blur must be in \(0, 256\] px'),
    ('--max-upscale', '0.5', 'max upscale must be a number >= 1, got 0.5'),
    ('--max-upscale', 'nan', 'max upscale must be a number >= 1, got nan'),
    ('--min-side', '8', 'min side must be at least 16, got 8'),
])
def test_bad_blur_options_are_one_line_errors(tmp_path, option, value, message):
    with pytest.raises(SystemExit, match=f'error: {message}'):
        synthesize_gopro.main(['--out', str(tmp_path / 'syn'), '--count', '1', '--size', '32x32', option, value])
    assert not (tmp_path / 'syn').exists()


def test_camera_realism_options(tmp_path, capsys):
    out = tmp_path / 'cam'
    synthesize_gopro.main([
        '--out',
        str(out), '--count', '2', '--size', '40x32', '--realism', 'camera', '--without', 'jpeg,noise', '--max-upscale',
        'inf', '--min-side', '32'
    ])
    assert '0% below 40x32, 0% with an upsampled background photo' in capsys.readouterr().out
    meta = json.loads((out / 'synthesis.json').read_text())
    assert meta['options']['realism'] == 'camera' and meta['options']['without'] == ['jpeg', 'noise']
    assert meta['options']['max_upscale'] is None and meta['options']['min_side'] == 32
    assert all(s['jpeg_quality'] is None and s['shot_noise'] is None for s in meta['samples'])
    with pytest.raises(SystemExit):
        synthesize_gopro.main(['--out', str(tmp_path / 'bad'), '--count', '1', '--without', 'blur'])
    assert "unknown feature 'blur'" in capsys.readouterr().err
    assert not (tmp_path / 'bad').exists()
