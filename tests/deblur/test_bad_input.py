"""``sdnet-deblur`` against bad weights, bad options, awkward file systems, phone photos and termination."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sdnet_plugin import deblur, export
from sdnet_plugin.file_safety import temp_path, write_bytes

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, SDNET_DCN_BACKEND='torch', PYTHONPATH=str(REPO))


def _image(height=20, width=28, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def _run(args, capsys):
    status = deblur.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_error(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in stderr, stderr
    return lines[0]


def test_recursive_globs_do_not_follow_link_loops(tmp_path):
    shots = tmp_path / 'dir'
    (shots / 'sub').mkdir(parents=True)
    cv2.imwrite(str(shots / 'a.jpg'), _image())
    cv2.imwrite(str(shots / 'sub' / 'b.jpg'), _image(seed=1))
    os.symlink('.', shots / 'loop')
    os.symlink('..', shots / 'sub' / 'up')
    code = ('from sdnet_plugin.media import collect_inputs; '
            f'inputs, errors = collect_inputs([{str(shots / "**" / "*.jpg")!r}], recursive=True); '
            'print(sorted(str(p) for p, _ in inputs), errors)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{[str(shots / 'a.jpg'), str(shots / 'sub' / 'b.jpg')]} []"


def test_files_reached_twice_are_restored_once(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), _image())
    os.symlink('.', tmp_path / 'loop')
    status, stdout, _ = _run([
        tmp_path / '*.png', tmp_path / 'loop' / '*.png', '-o', tmp_path / 'out', '--weights', tiny_weights, '--tile',
        '0'
    ], capsys)
    assert status == 0 and '1 restored, 0 failed' in stdout


def test_empty_weights_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    cv2.imwrite(str(tmp_path / 'a.png'), _image())
    status, _, stderr = _run([tmp_path / 'a.png', '-o', tmp_path / 'out', '--weights', empty], capsys)
    assert status == 2 and _one_error(stderr) == f'sdnet-deblur: error: weights file {empty} is empty (0 bytes)'
    assert export.main(['--format', 'weights', '--weights', str(empty), '-o', str(tmp_path / 'w.pth')]) == 2
    assert _one_error(capsys.readouterr().err) == f'sdnet-export: error: weights file {empty} is empty (0 bytes)'
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'w.pth').exists()


def test_unknown_device_is_one_line(tmp_path, tiny_weights, capsys):
    status, _, stderr = _run([tmp_path / 'a.png', '--weights', tiny_weights, '--device', 'foo'], capsys)
    assert status == 2 and _one_error(stderr) == \
        "sdnet-deblur: error: --device 'foo' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"


def _edsr_checkpoint(path):
    from basicsr.archs.edsr_arch import EDSR
    network_opt = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}
    net = EDSR(**{k: v for k, v in network_opt.items() if k != 'type'})
    torch.save({'params': net.state_dict(), 'network_g': network_opt}, path)


def _broken_checkpoint(tiny_sdnet, checkpoint_writer, path, kind):
    net = tiny_sdnet()
    network_opt = {'type': 'SDNet', 'preset': 'tiny'}
    if kind == 'nan':
        with torch.no_grad():
            net.conv_last.weight[0, 0, 0, 0] = float('nan')
    elif kind == 'overflow':  # finite weights whose activations overflow: the output is not finite
        with torch.no_grad():
            net.conv_first.weight.fill_(1e38)
    elif kind == 'unknown argument':
        network_opt['nmu_feat'] = 16
    else:
        network_opt['type'] = 'SDNett'
    checkpoint_writer(net, path, network_opt)


@pytest.mark.parametrize('kind, message', [
    ('sr', 'EDSR turns a 32x32 RGB image into 64x64 with 3 channels: deblurring needs a network that keeps size and '
     'channels (is it a super-resolution checkpoint?)'),
    ('nan', 'weights {path} hold NaN or infinite values (1 tensors, e.g. conv_last.weight): the training run '
     'diverged; use an earlier checkpoint'),
    ('unknown argument', "cannot build the network {{'type': 'SDNet', 'preset': 'tiny', 'nmu_feat': 16, "
     "'preset_version': 1}}: "
     "SDNet.__init__() got an unexpected keyword argument 'nmu_feat'"),
    ('unknown type', "unknown arch type 'SDNett' (network_g.type); did you mean SDNet?"),
])
def test_unusable_checkpoints_are_one_line(tmp_path, tiny_sdnet, checkpoint_writer, capsys, kind, message):
    path = tmp_path / 'net_g.pth'
    if kind == 'sr':
        _edsr_checkpoint(path)
    else:
        _broken_checkpoint(tiny_sdnet, checkpoint_writer, path, kind)
    cv2.imwrite(str(tmp_path / 'a.png'), _image())
    status, _, stderr = _run([tmp_path / 'a.png', '-o', tmp_path / 'out', '--weights', path], capsys)
    assert status == 2 and _one_error(stderr) == 'sdnet-deblur: error: ' + message.format(path=path)
    assert not (tmp_path / 'out').exists()


def test_non_finite_output_is_a_failure_not_a_black_image(tmp_path, tiny_sdnet, checkpoint_writer, capsys):
    path = tmp_path / 'net_g.pth'
    _broken_checkpoint(tiny_sdnet, checkpoint_writer, path, 'overflow')
    cv2.imwrite(str(tmp_path / 'a.png'), _image())
    status, stdout, stderr = _run([tmp_path / 'a.png', '-o', tmp_path / 'out', '--weights', path, '--tile', '0'],
                                  capsys)
    assert status == 1 and '0 restored, 1 failed' in stdout
    assert 'a.png: the network produced NaN or infinite values' in stderr
    assert not list((tmp_path / 'out').glob('*'))


def test_export_onto_its_own_checkpoint_is_refused(tmp_path, tiny_weights, capsys):
    checkpoint = tmp_path / 'net_g.pth'
    checkpoint.write_bytes(Path(tiny_weights).read_bytes())
    for target, form in ((checkpoint, 'weights'), (tmp_path / '.' / 'net_g.pth', 'onnx')):
        assert export.main(['--format', form, '--weights', str(checkpoint), '-o', str(target)]) == 2
        assert _one_error(capsys.readouterr().err) == \
            f'sdnet-export: error: {target} is the checkpoint itself; write the {form} file under another name'
    assert checkpoint.read_bytes() == Path(tiny_weights).read_bytes()


def test_long_file_names(tmp_path, tiny_weights, capsys):
    name = 'x' * 246 + '.png'  # 250 bytes: the temporary name must be shortened to fit 255
    cv2.imwrite(str(tmp_path / name), _image())
    status, _, stderr = _run([tmp_path / name, '-o', tmp_path / 'out', '--weights', tiny_weights], capsys)
    assert status == 0, stderr
    assert [p.name for p in (tmp_path / 'out').iterdir()] == [name]
    status, _, stderr = _run([tmp_path / name, '-o', tmp_path / 'out2', '--weights', tiny_weights, '--compare'], capsys)
    assert status == 1 and 'Traceback' not in stderr and stderr.strip().splitlines()[-1] == (
        f'sdnet-deblur: {tmp_path / name}: its compare output name would be 258 bytes, over the 255 a file name may '
        'have; rename the file or shorten --suffix')
    assert not (tmp_path / 'out2').exists()  # no output when one of them cannot be written
    longest = 'é' * 125 + '.jpg'  # 254 bytes in UTF-8
    write_bytes(tmp_path / longest, b'data')
    assert (tmp_path / longest).read_bytes() == b'data'
    tmp = temp_path(tmp_path / longest, keep_suffix=False)
    assert len(os.path.basename(tmp).encode()) <= 255 and tmp.endswith('.partial')


# PIL's names for the EXIF orientations: what a viewer does to the stored pixels
PIL_TRANSPOSE = {
    2: 'FLIP_LEFT_RIGHT',
    3: 'ROTATE_180',
    4: 'FLIP_TOP_BOTTOM',
    5: 'TRANSPOSE',
    6: 'ROTATE_270',
    7: 'TRANSVERSE',
    8: 'ROTATE_90'
}


def _jpeg_with_orientation(path, rgb, orientation):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=100, exif=exif.tobytes())


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_on_read(tmp_path, orientation):
    from PIL import Image

    from sdnet_plugin.image_io import decode_upright
    rgb = np.zeros((12, 20, 3), np.uint8)
    rgb[:4, :6] = (255, 0, 0)  # a red corner shows every flip and turn
    path = tmp_path / 'phone.jpg'
    _jpeg_with_orientation(path, rgb, orientation)
    upright = decode_upright(path.read_bytes())
    stored = np.asarray(Image.open(path))
    expected = stored if orientation == 1 else \
        np.asarray(Image.fromarray(stored).transpose(getattr(Image.Transpose, PIL_TRANSPOSE[orientation])))
    assert upright.shape == expected.shape
    assert np.abs(upright[..., ::-1].astype(int) - expected).max() <= 2


def test_portrait_phone_photo_comes_out_upright(tmp_path, tiny_weights, capsys):
    path = tmp_path / 'portrait.jpg'
    _jpeg_with_orientation(path, _image(24, 40)[..., ::-1].copy(), 6)  # stored landscape, shown portrait
    status, _, _ = _run([path, '-o', tmp_path / 'out', '--weights', tiny_weights, '--tile', '0'], capsys)
    assert status == 0 and cv2.imread(str(tmp_path / 'out' / 'portrait.jpg')).shape == (40, 24, 3)


def test_sigterm_during_a_video_leaves_no_temporary_file(tmp_path, tiny_weights):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (96, 64))
    for i in range(400):
        writer.write(_image(64, 96, seed=i % 7))
    writer.release()
    out = tmp_path / 'out'
    command = [
        sys.executable, '-m', 'sdnet_plugin.deblur', video, '-o', out, '--weights', tiny_weights, '--threads', '1',
        '--compare'
    ]
    process = subprocess.Popen([str(c) for c in command], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.time() + 60
        while not (out.is_dir() and len(list(out.iterdir())) == 2):  # both temporary videos are being written
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert 'interrupted (outputs written so far are complete; no partial file is left)' in stderr
    assert list(out.iterdir()) == []


def _video_with_audio(path, av, frames=10, fps=10, sample_rate=16000):
    with av.open(str(path), 'w') as out:
        video = out.add_stream('mpeg4', rate=fps)
        video.width, video.height, video.pix_fmt = 48, 32, 'yuv420p'
        audio = out.add_stream('aac', rate=sample_rate, layout='mono')
        for i in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(_image(32, 48, seed=i), format='bgr24')):
                out.mux(packet)
        tone = 0.3 * np.sin(np.arange(sample_rate * frames // fps) * 2 * np.pi * 440 / sample_rate)
        sound = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format='fltp', layout='mono')
        sound.sample_rate = sample_rate
        for packet in audio.encode(sound):
            out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def test_video_keeps_its_audio_track(tmp_path, tiny_weights, capsys):
    av = pytest.importorskip('av')
    clip = tmp_path / 'clip.mp4'
    _video_with_audio(clip, av)
    status, _, stderr = _run([clip, '-o', tmp_path / 'out', '--weights', tiny_weights, '--compare'], capsys)
    assert status == 0 and 'audio' not in stderr, stderr
    for name in ('clip.mp4', 'clip_compare.mp4'):
        with av.open(str(tmp_path / 'out' / name)) as result:
            assert len(result.streams.video) == 1 and len(result.streams.audio) == 1
            audio = result.streams.audio[0]
            samples = sum(frame.samples for frame in result.decode(audio))
            assert audio.sample_rate == 16000 and abs(samples - 16000) <= 2048  # one second of sound
    assert not list((tmp_path / 'out').glob('.*'))


def test_video_without_pyav_says_that_audio_is_not_copied(tmp_path, tiny_weights, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'av', None)  # import av fails
    clip = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (48, 32))
    for i in range(3):
        writer.write(_image(32, 48, seed=i))
    writer.release()
    status, _, stderr = _run([clip, '-o', tmp_path / 'out', '--weights', tiny_weights], capsys)
    assert status == 0
    assert f"sdnet-deblur: {clip}: audio not copied: the 'av' package (PyAV) is not installed" in stderr
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['clip.avi']


def test_leftover_temporary_files_are_not_inputs(tmp_path):
    from sdnet_plugin.file_safety import temp_path
    from sdnet_plugin.media import collect_inputs
    cv2.imwrite(str(tmp_path / 'a.png'), _image())
    leftover = temp_path(tmp_path / 'b.png')  # what a killed writer leaves behind
    assert Path(leftover).name.endswith('.png')
    inputs, errors = collect_inputs([str(tmp_path)], recursive=True)
    assert [p.name for p, _ in inputs] == ['a.png'] and not errors
