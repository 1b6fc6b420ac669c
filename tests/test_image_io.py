"""The one image reader and writer: round trips at every depth, alpha, grey, EXIF orientation, one-line errors."""
import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from sdnet_plugin import image_io
from sdnet_plugin.file_safety import is_temporary
from sdnet_plugin.image_io import (IMAGE_EXTENSIONS, Image, ImageReadError, decode_image, decode_upright, is_image_name,
                                   read_image, read_unchanged, write_image)


def _rgb(h=12, w=20, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize('suffix, bit_depth', [('.png', 8), ('.png', 16), ('.tif', 8), ('.tiff', 16), ('.bmp', 8),
                                               ('.ppm', 8), ('.ppm', 16), ('.webp', 8)])
def test_lossless_round_trips_keep_depth_and_values(tmp_path, suffix, bit_depth):
    rgb = _rgb()
    path = tmp_path / f'image{suffix}'
    write_image(path, rgb, bit_depth=bit_depth)
    image = read_image(path)
    assert isinstance(image, Image) and image.bit_depth == bit_depth and image.alpha is None and not image.grey
    assert image.rgb.dtype == np.float32 and image.rgb.shape == rgb.shape
    step = 1 / (2**bit_depth - 1)
    tolerance = 0.5 * step + 1e-6 if suffix != '.webp' else 0.1
    assert np.abs(image.rgb - rgb).max() <= tolerance
    if bit_depth == 16:  # 16 bits really kept: finer than an 8-bit step
        assert np.abs(image.rgb - rgb).max() < 1 / 510
    assert os.listdir(tmp_path) == [path.name]


def test_channel_order_is_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), np.float32)
    rgb[..., 0] = 1.0  # pure red
    write_image(tmp_path / 'red.png', rgb)
    assert read_unchanged(tmp_path / 'red.png')[0, 0].tolist() == [0, 0, 255]  # OpenCV stores BGR
    assert read_image(tmp_path / 'red.png').rgb[0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize('bit_depth', [8, 16])
def test_alpha_round_trip(tmp_path, bit_depth):
    rgb, alpha = _rgb(), np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    write_image(tmp_path / 'cut.png', rgb, bit_depth=bit_depth, alpha=alpha)
    image = read_image(tmp_path / 'cut.png')
    assert image.bit_depth == bit_depth and image.alpha is not None and image.alpha.dtype == np.float32
    assert image.alpha.shape == (12, 20) and np.abs(image.alpha - alpha).max() <= 0.5 / (2**bit_depth - 1) + 1e-6
    assert np.abs(image.rgb - rgb).max() <= 0.5 / (2**bit_depth - 1) + 1e-6
    stored = read_unchanged(tmp_path / 'cut.png')
    assert stored.shape == (12, 20, 4) and stored.dtype == (np.uint8 if bit_depth == 8 else np.uint16)


@pytest.mark.parametrize('bit_depth', [8, 16])
def test_grey_files_read_as_rgb_and_write_back_grey(tmp_path, bit_depth):
    grey = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    write_image(tmp_path / 'grey.png', grey, bit_depth=bit_depth)
    assert read_unchanged(tmp_path / 'grey.png').ndim == 2
    image = read_image(tmp_path / 'grey.png')
    assert image.grey and image.rgb.shape == (5, 6, 3) and image.bit_depth == bit_depth
    assert np.array_equal(image.rgb[..., 0], image.rgb[..., 2])
    assert np.abs(image.rgb[..., 1] - grey).max() <= 0.5 / (2**bit_depth - 1) + 1e-6
    # grey with alpha (PIL's 'LA' PNG) comes back as RGB + alpha
    PILImage.fromarray(np.dstack([np.full((3, 4), 200, np.uint8),
                                  np.full((3, 4), 51, np.uint8)]), 'LA').save(tmp_path / 'la.png')
    image = read_image(tmp_path / 'la.png')
    assert np.allclose(image.rgb, 200 / 255) and np.allclose(image.alpha, 0.2)


def test_float_images_keep_full_precision(tmp_path):
    rgb = _rgb()
    write_image(tmp_path / 'hdr.tif', rgb, bit_depth=32)
    image = read_image(tmp_path / 'hdr.tif')
    assert image.bit_depth == 32 and np.array_equal(image.rgb, rgb)


@pytest.mark.parametrize('orientation, turn', [
    (1, lambda a: a),
    (3, lambda a: a[::-1, ::-1]),
    (6, lambda a: np.rot90(a, -1)),
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
    (5, lambda a: a.swapaxes(0, 1)),
])
def test_exif_orientation_turns_photos_upright_like_pil(tmp_path, orientation, turn):
    stored = np.zeros((8, 12, 3), np.uint8)  # landscape as stored, marked top-left so every turn differs
    stored[:2, :3] = 255
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path = tmp_path / 'photo.jpg'
    PILImage.fromarray(stored).save(path, quality=100, exif=exif)
    image = read_image(path)
    with PILImage.open(path) as pil:
        from PIL import ImageOps
        expected = np.asarray(ImageOps.exif_transpose(pil).convert('RGB'), np.float32) / 255
    assert image.rgb.shape == expected.shape == turn(stored).shape
    assert np.abs(image.rgb - expected).max() < 0.05
    assert read_unchanged(path).shape == stored.shape  # unchanged: as stored
    assert read_unchanged(path, upright=True).shape == expected.shape
    assert decode_upright(path.read_bytes()).shape == expected.shape


def test_exif_orientation_of_pngs(tmp_path):
    stored = np.zeros((4, 10, 3), np.uint8)
    stored[0, 0] = 255
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    PILImage.fromarray(stored).save(tmp_path / 'phone.png', exif=exif)
    image = read_image(tmp_path / 'phone.png')
    assert image.rgb.shape == (10, 4, 3) and image.rgb[0, -1].tolist() == [1.0, 1.0, 1.0]
    PILImage.fromarray(stored).save(tmp_path / 'plain.png')
    assert read_image(tmp_path / 'plain.png').rgb.shape == (4, 10, 3)


def _one_line_error(path):
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    text = str(info.value)
    assert '\n' not in text and str(path) in text and text.startswith(f'{path}: ')
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    return info.value.reason


def test_unreadable_files_raise_one_line_naming_the_file(tmp_path):
    assert _one_line_error(tmp_path / 'missing.png').startswith('cannot read: No such file')
    (tmp_path / 'empty.png').write_bytes(b'')
    assert _one_line_error(tmp_path / 'empty.png') == 'empty file'
    (tmp_path / 'text.jpg').write_bytes(b'not an image at all\nsecond line')
    assert 'not a decodable image' in _one_line_error(tmp_path / 'text.jpg')
    write_image(tmp_path / 'whole.png', _rgb(64, 64))
    (tmp_path / 'cut.png').write_bytes((tmp_path / 'whole.png').read_bytes()[:200])
    assert 'not a decodable image' in _one_line_error(tmp_path / 'cut.png')
    (tmp_path / 'folder.png').mkdir()
    assert _one_line_error(tmp_path / 'folder.png').startswith('cannot read')
    with pytest.raises(ImageReadError, match='^blob: empty file$'):
        decode_image(b'', 'blob')
    with pytest.raises(ImageReadError, match='^missing.png: '):
        read_unchanged('missing.png')


def test_unsupported_pixel_layouts_are_refused(tmp_path):
    with pytest.raises(ImageReadError, match='^x.tif: unsupported number of channels 2$'):
        image_io._to_image(np.zeros((4, 4, 2), np.uint8), 'x.tif')  # OpenCV's codecs write no such files
    ok, data = cv2.imencode('.tif', np.zeros((4, 4), np.int16))
    assert ok
    (tmp_path / 'signed.tif').write_bytes(data.tobytes())
    assert 'unsupported pixel type' in _one_line_error(tmp_path / 'signed.tif')


def test_write_errors_are_values_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match='bit depth must be 8, 16 or 32'):
        write_image(tmp_path / 'a.png', _rgb(), bit_depth=12)
    with pytest.raises(ValueError, match=r'image must be \(H, W, 3\)'):
        write_image(tmp_path / 'a.png', np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match='alpha must be'):
        write_image(tmp_path / 'a.png', _rgb(), alpha=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="cannot write a 8-bit image as '.nope'"):
        write_image(tmp_path / 'a.nope', _rgb())
    assert os.listdir(tmp_path) == []


def test_values_are_clipped_and_jpeg_is_high_quality(tmp_path):
    rgb = _rgb(32, 32) * 1.4 - 0.2
    write_image(tmp_path / 'a.jpg', rgb)
    image = read_image(tmp_path / 'a.jpg')
    assert image.rgb.min() >= 0 and image.rgb.max() <= 1 and image.bit_depth == 8
    write_image(tmp_path / 'b.png', rgb)
    assert np.abs(read_image(tmp_path / 'b.png').rgb - np.clip(rgb, 0, 1)).max() <= 0.5 / 255 + 1e-6
    with PILImage.open(tmp_path / 'a.jpg') as pil:
        assert pil.format == 'JPEG' and pil.quantization[0][0] <= 3  # quality 95


def test_writes_are_atomic(tmp_path, monkeypatch):
    write_image(tmp_path / 'a.png', _rgb())
    before = (tmp_path / 'a.png').read_bytes()

    def broken_fsync(fd):
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with pytest.raises(OSError, match='Input/output error'):
        write_image(tmp_path / 'a.png', _rgb(seed=1))
    assert (tmp_path / 'a.png').read_bytes() == before and os.listdir(tmp_path) == ['a.png']
    assert not any(is_temporary(name) for name in os.listdir(tmp_path))


def test_extensions_are_one_lowercase_set_covering_every_previous_one():
    assert len(set(IMAGE_EXTENSIONS)) == len(IMAGE_EXTENSIONS)
    assert all(e.startswith('.') and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.jpe', '.exr', '.hdr'} <= \
        set(IMAGE_EXTENSIONS)
    assert is_image_name('A/B.PNG') and is_image_name('x.tiff') and not is_image_name('x.mp4')
    assert not is_image_name('flow.png.txt')


def test_every_listed_extension_decodes_what_it_names(tmp_path):
    """Each extension OpenCV can write round-trips through read_image (the others are read-only formats)."""
    rgb = np.full((8, 8, 3), 0.5, np.float32)
    written = 0
    for suffix in IMAGE_EXTENSIONS:
        try:
            data = image_io.encode_image(suffix, rgb, bit_depth=32 if suffix in ('.exr', '.hdr', '.pic') else 8)
        except ValueError:
            continue
        image = decode_image(data, f'x{suffix}')
        assert np.abs(image.rgb - 0.5).max() < 0.05, suffix
        written += 1
    assert written >= 12


def test_decode_image_reads_bytes_from_memory():
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((3, 5, 3), 128, np.uint8)).save(buffer, 'PNG')
    image = decode_image(buffer.getvalue())
    assert image.rgb.shape == (3, 5, 3) and np.allclose(image.rgb, 128 / 255)
