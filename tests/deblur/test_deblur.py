"""The ``sdnet-deblur`` command line (sdnet_plugin/deblur.py), run in-process on tiny files."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sdnet_plugin import deblur, inference


def _photo(height, width, channels=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 4), max(2, width // 4), channels)).astype(np.float32)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
    scale = np.iinfo(dtype).max
    return np.round(np.clip(image, 0, 1) * scale).astype(dtype).squeeze()


def _run(args, capsys):
    status = deblur.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _leftovers(folder):
    return [p for p in folder.rglob('*') if 'partial' in p.name]


def test_folder_with_good_and_bad_files(tmp_path, tiny_weights, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'colour.png'), _photo(20, 28))
    cv2.imwrite(str(src / 'grey16.png'), _photo(18, 22, channels=1, dtype=np.uint16))
    rgba = _photo(16, 24, channels=4)
    cv2.imwrite(str(src / 'rgba.png'), rgba)
    cv2.imwrite(str(src / 'small.jpg'), _photo(5, 7))
    good = (src / 'colour.png').read_bytes()
    (src / 'truncated.png').write_bytes(good[:len(good) // 2])
    (src / 'notes.jpg').write_text('this is not an image\n')
    os.symlink(src / 'gone.png', src / 'dangling.png')  # unreadable: the link's target does not exist
    (src / 'readme.txt').write_text('ignored: not an image extension\n')
    out = tmp_path / 'out'

    status, stdout, stderr = _run([src, '-o', out, '--weights', tiny_weights, '--tile', '0'], capsys)

    assert status == 1
    assert sorted(p.name for p in out.iterdir()) == ['colour.png', 'grey16.png', 'rgba.png', 'small.jpg']
    restored = cv2.imread(str(out / 'colour.png'), cv2.IMREAD_UNCHANGED)
    assert restored.shape == (20, 28, 3) and restored.dtype == np.uint8
    grey = cv2.imread(str(out / 'grey16.png'), cv2.IMREAD_UNCHANGED)
    assert grey.shape == (18, 22) and grey.dtype == np.uint16 and grey.max() > 255
    restored_rgba = cv2.imread(str(out / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    assert restored_rgba.shape == (16, 24, 4) and np.array_equal(restored_rgba[..., 3], rgba[..., 3])
    assert cv2.imread(str(out / 'small.jpg')).shape == (5, 7, 3)
    errors = [line for line in stderr.splitlines() if line.startswith('sdnet-deblur: ')]
    for name, reason in (('truncated.png', 'not a decodable image'), ('notes.jpg', 'not a decodable image'),
                         ('dangling.png', 'cannot read')):
        assert len([e for e in errors if name in e]) == 1
        assert reason in next(e for e in errors if name in e)
    assert '4 restored, 3 failed' in stdout
    assert not _leftovers(tmp_path)


def test_outputs_never_overwrite_inputs_and_suffix(tmp_path, tiny_weights, capsys):
    photo = tmp_path / 'shot.png'
    cv2.imwrite(str(photo), _photo(12, 16))
    before = photo.read_bytes()
    status, _, stderr = _run([photo, '-o', tmp_path, '--weights', tiny_weights], capsys)
    assert status == 1 and 'would overwrite an input' in stderr
    assert photo.read_bytes() == before
    status, _, _ = _run([photo, '-o', tmp_path, '--suffix', '_sharp', '--weights', tiny_weights], capsys)
    assert status == 0 and (tmp_path / 'shot_sharp.png').is_file() and photo.read_bytes() == before


def test_recursive_folders_keep_sub_folders_and_globs(tmp_path, tiny_weights, capsys):
    (tmp_path / 'in' / 'day').mkdir(parents=True)
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), _photo(8, 8))
    cv2.imwrite(str(tmp_path / 'in' / 'day' / 'b.png'), _photo(8, 12))
    status, stdout, _ = _run([tmp_path / 'in', '-r', '-o', tmp_path / 'out', '--weights', tiny_weights], capsys)
    assert status == 0 and '2 restored, 0 failed' in stdout
    assert (tmp_path / 'out' / 'a.png').is_file() and (tmp_path / 'out' / 'day' / 'b.png').is_file()
    status, stdout, stderr = _run(
        [tmp_path / 'in' / '*.png', tmp_path / 'nothing*.png', '-o', tmp_path / 'glob', '--weights', tiny_weights],
        capsys)
    assert status == 1 and 'no file matches' in stderr and '1 restored, 1 failed' in stdout
    assert [p.name for p in (tmp_path / 'glob').iterdir()] == ['a.png']


def test_compare_and_offset_pictures(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'shot.jpg'), _photo(36, 44))
    status, _, _ = _run([
        tmp_path / 'shot.jpg', '-o', tmp_path / 'out', '--weights', tiny_weights, '--compare', '--save-offsets',
        '--offset-level', '1'
    ], capsys)
    assert status == 0
    compare = cv2.imread(str(tmp_path / 'out' / 'shot_compare.jpg'))
    assert compare.shape == (36, 88, 3)
    offsets = cv2.imread(str(tmp_path / 'out' / 'shot_offsets.png'))
    assert offsets.shape == (36, 88, 3)
    status, _, stderr = _run([
        tmp_path / 'shot.jpg', '-o', tmp_path / 'out', '--weights', tiny_weights, '--save-offsets', '--offset-level',
        '0'
    ], capsys)
    assert status == 2 and 'not one of the network' in stderr  # the tiny preset has SVD modules at 1/2 and 1/4


def test_large_image_goes_through_tiles_like_one_pass(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'big.png'), _photo(90, 132, dtype=np.uint16))
    runs = {}
    for name, tile in (('whole', '0'), ('tiled', '48')):
        status, _, _ = _run([
            tmp_path / 'big.png', '-o', tmp_path / name, '--weights', tiny_weights, '--tile', tile, '--tile-overlap',
            '32', '--precision', 'fp32'
        ], capsys)
        assert status == 0
        runs[name] = cv2.imread(str(tmp_path / name / 'big.png'), cv2.IMREAD_UNCHANGED).astype(np.int64)
    assert np.abs(runs['tiled'] - runs['whole']).max() <= 1  # 16-bit levels


def test_bfloat16_output_agrees_with_float32(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'photo.png'), _photo(48, 64, dtype=np.uint16))
    runs = {}
    for name in ('fp32', 'bf16'):
        status, _, err = _run([
            tmp_path / 'photo.png', '-o', tmp_path / name, '--weights', tiny_weights, '--precision', name, '--device',
            'cpu'
        ], capsys)
        assert status == 0 and {'fp32': 'float32', 'bf16': 'bfloat16'}[name] in err
        runs[name] = cv2.imread(str(tmp_path / name / 'photo.png'), cv2.IMREAD_UNCHANGED).astype(np.float64)
    mse = np.mean((runs['bf16'] - runs['fp32'])**2) / 65535**2
    assert 0 < mse and 10 * np.log10(1 / mse) > 45


def test_owned_cpu_network_runs_as_a_bfloat16_copy(tiny_weights):
    restorer = inference.SDNetRestorer(weights=tiny_weights, device='cpu', dtype=torch.bfloat16)
    weight = restorer.net.conv_first.weight
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    assert restorer.autocast_dtype is None and restorer.input_dtype == torch.float32
    out = restorer.forward(torch.rand(1, 3, 20, 28))['image']
    assert out.dtype == torch.float32 and out.shape == (1, 3, 20, 28)


def test_float16_on_the_cpu_is_a_one_line_error(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'photo.png'), _photo(24, 32))
    status, _, err = _run([
        tmp_path / 'photo.png', '-o', tmp_path / 'out', '--weights', tiny_weights, '--precision', 'fp16', '--device',
        'cpu'
    ], capsys)
    assert status == 2 and err.strip().splitlines()[-1] == \
        'sdnet-deblur: error: fp16 is not supported on the CPU; use bf16 (or fp32)'
    assert not (tmp_path / 'out').exists()


def test_video_frame_by_frame_keeps_fps_and_size(tmp_path, tiny_weights, capsys):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 12.0, (40, 24))
    for i in range(4):
        writer.write(_photo(24, 40, seed=i))
    writer.release()
    status, _, _ = _run([path, '-o', tmp_path / 'out', '--weights', tiny_weights, '--compare', '--save-offsets'],
                        capsys)
    assert status == 0
    for name, width in (('clip.avi', 40), ('clip_compare.avi', 80), ('clip_offsets.avi', 80)):
        capture = cv2.VideoCapture(str(tmp_path / 'out' / name))
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
        frames = []
        ok, frame = capture.read()
        while ok:
            frames.append(frame)
            ok, frame = capture.read()
        capture.release()
        assert len(frames) == 4 and frames[0].shape == (24, width, 3), name
    assert not _leftovers(tmp_path)


def test_missing_default_weights_say_where_they_were_looked_for(tmp_path, monkeypatch, capsys):
    missing = (tmp_path / 'package' / 'sdnet_base_synthetic.pth', tmp_path / 'weights' / 'sdnet_base_synthetic.pth')
    monkeypatch.setattr(inference, 'DEFAULT_WEIGHTS_CANDIDATES', missing)
    cv2.imwrite(str(tmp_path / 'shot.png'), _photo(10, 10))
    status, _, stderr = _run([tmp_path / 'shot.png', '-o', tmp_path / 'out'], capsys)
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1 and '--weights' in stderr
    assert all(str(path) in stderr for path in missing)
    assert not (tmp_path / 'out').exists()


def test_default_weights_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    package_copy, checkout = inference.DEFAULT_WEIGHTS_CANDIDATES
    assert package_copy.is_absolute() and package_copy.parent.parent == Path(inference.__file__).resolve().parent
    assert checkout.parent.parent == Path(deblur.__file__).resolve().parent.parent
    first, second = tmp_path / 'a.pth', tmp_path / 'b.pth'
    assert inference.find_default_weights((first, second)) is None
    second.write_bytes(b'')
    assert inference.find_default_weights((first, second)) == second
    first.write_bytes(b'')
    assert inference.find_default_weights((first, second)) == first


def test_module_entry_point_exit_status(tmp_path, tiny_weights):
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n')
    env = dict(os.environ, SDNET_DCN_BACKEND='torch')  # skip timing the backends in the fresh process
    command = [
        sys.executable, '-m', 'sdnet_plugin.deblur', tmp_path / 'bad.png', '-o', tmp_path / 'out', '--weights',
        tiny_weights, '--threads', '1'
    ]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert 'bad.png: not a decodable image' in result.stderr and '0 restored, 1 failed' in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_half_precision_default(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'shot.png'), _photo(32, 40))
    outputs = {}
    for name, extra in (('half', []), ('cpu', ['--device', 'cpu'])):
        status, _, _ = _run([tmp_path / 'shot.png', '-o', tmp_path / name, '--weights', tiny_weights] + extra, capsys)
        assert status == 0
        outputs[name] = cv2.imread(str(tmp_path / name / 'shot.png')).astype(np.int64)
    assert np.abs(outputs['half'] - outputs['cpu']).max() <= 3


def test_out_of_memory_retries_with_smaller_tiles(monkeypatch, tiny_sdnet):
    tiles = []

    def tiled_forward(forward, image, tile, overlap, progress=False, align=4):
        tiles.append(tile)
        if not tile or tile > 100:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory')
        return {'image': image.float()}

    monkeypatch.setattr(inference, 'tiled_forward', tiled_forward)
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: None)
    restorer = inference.SDNetRestorer(net=tiny_sdnet(), device=torch.device('cpu'), dtype=torch.float32, tile=0)
    restored, offsets = restorer(np.full((300, 500, 3), 0.5, np.float32))
    assert tiles == [0, 250, 125, 64] and restorer.tile == 64
    assert restored.shape == (300, 500, 3) and offsets is None
