"""Image files: the project's one reader and one writer.

:func:`read_image` decodes any image OpenCV reads (8-bit, 16-bit, float HDR; grey, RGB, with or without alpha), turns
it upright by its EXIF orientation as viewers show it, and returns float32 RGB in ``[0, 1]`` with its bit depth and
alpha. :func:`read_unchanged` returns the stored pixels untouched (flow PNGs, dataset checks). :func:`write_image`
writes atomically (:mod:`sdnet_plugin.file_safety`), in the format of the file's extension. Every unreadable file
raises one :class:`ImageReadError` line that names the file.
"""
import io
import os
from typing import NamedTuple, Optional

import cv2
import numpy as np

from sdnet_plugin.file_safety import write_bytes

__all__ = [
    'IMAGE_EXTENSIONS', 'Image', 'ImageReadError', 'decode_image', 'decode_upright', 'encode_image', 'is_image_name',
    'read_image', 'read_unchanged', 'write_image'
]
# Every extension OpenCV's codecs read (the formats the command-line tools and the data pipeline accept), common
# ones first. '.exr' needs OPENCV_IO_ENABLE_OPENEXR=1; without it such a file is reported as unreadable.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.pnm', '.jpe',
                    '.jp2', '.dib', '.pxm', '.sr', '.ras', '.exr', '.hdr', '.pic')
# stored dtype -> (bit depth, value of full intensity)
_DEPTHS = {np.dtype(np.uint8): (8, 255.0), np.dtype(np.uint16): (16, 65535.0), np.dtype(np.float32): (32, 1.0)}
_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.float32}
_JPEG = ('.jpg', '.jpeg', '.jpe')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
JPEG_QUALITY = 95
# EXIF orientation -> how to turn the stored pixels upright (PIL's ImageOps.exif_transpose table, on arrays)
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1)
}


class ImageReadError(OSError, ValueError):
    """An image file that cannot be read; ``str()`` is one line ``<file>: <reason>``.

    It is a ``ValueError`` and, as the readers it replaces raised, an ``OSError`` (``IOError``).

    Attributes:
        name (str): The file (or the name given for decoded bytes).
        reason (str): Why, without the name (for messages that name the file themselves).
    """

    def __init__(self, name, reason):
        super().__init__(f'{name}: {reason}')
        self.name, self.reason = str(name), reason

    def __str__(self):
        return f'{self.name}: {self.reason}'


class Image(NamedTuple):
    """A decoded image.

    Attributes:
        rgb (ndarray): float32 ``(H, W, 3)`` RGB in ``[0, 1]`` (grey images repeat their channel).
        bit_depth (int): Stored depth: 8, 16, or 32 for float (HDR) formats.
        alpha (ndarray | None): float32 ``(H, W)`` opacity in ``[0, 1]``, None without an alpha channel.
        grey (bool): The file stores one grey channel. Default: False.
    """
    rgb: np.ndarray
    bit_depth: int
    alpha: Optional[np.ndarray] = None
    grey: bool = False


def is_image_name(name):
    """Whether ``name`` (a file name or path) has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def _orientation(data):
    """EXIF orientation of an encoded image (1, upright, when the format or the file has none)."""
    if data[:8] == _PNG_SIGNATURE and b'eXIf' not in data:
        return 1  # most PNGs: PIL would decode the whole image to look for an EXIF chunk after the pixels
    try:
        from PIL import Image as PILImage
        with PILImage.open(io.BytesIO(data)) as pil_image:
            return pil_image.getexif().get(0x0112, 1)
    except Exception:  # no EXIF reader for this format, or no EXIF
        return 1


def decode_upright(data):
    """Decode an encoded image as stored (bit depth, channels: ``cv2.IMREAD_UNCHANGED``) and turn it upright by its
    EXIF orientation, as viewers show it (phones store portrait photos sideways with an orientation tag).

    Args:
        data (bytes): The encoded file.

    Returns:
        ndarray | None: ``(H, W)`` or ``(H, W, C)`` in OpenCV's channel order, None when OpenCV cannot decode it.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return image
    turn = _ORIENTATIONS.get(_orientation(data))
    return image if turn is None else np.ascontiguousarray(turn(image))


def _read_bytes(path):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as error:
        raise ImageReadError(path, f'cannot read: {error.strerror or error}') from None
    if not data:
        raise ImageReadError(path, 'empty file')
    return data


def _decode_stored(data, name, upright):
    image = decode_upright(data) if upright else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageReadError(name, 'not a decodable image (truncated, corrupt or not an image)')
    return image


def read_unchanged(path, upright=False):
    """Read an image file's pixels as stored (``cv2.IMREAD_UNCHANGED``: bit depth, channels in OpenCV's BGR(A)
    order), for files whose values matter bit for bit (16-bit flow PNGs, dataset checks).

    Args:
        path (str | Path): The file.
        upright (bool): Turn the pixels by the EXIF orientation. Default: False.

    Returns:
        ndarray: ``(H, W)`` or ``(H, W, C)``.

    Raises:
        ImageReadError: Missing, empty or undecodable file (one line naming it).
    """
    return _decode_stored(_read_bytes(path), os.fspath(path), upright)


def _to_image(stored, name):
    """Stored pixels (OpenCV layout) -> :class:`Image`."""
    if stored.dtype not in _DEPTHS:
        raise ImageReadError(name, f'unsupported pixel type {stored.dtype} (8-bit, 16-bit or float32 images only)')
    if stored.ndim == 3 and stored.shape[2] == 1:
        stored = stored[..., 0]
    if stored.ndim == 3 and stored.shape[2] not in (3, 4):
        raise ImageReadError(name, f'unsupported number of channels {stored.shape[2]}')
    bit_depth, scale = _DEPTHS[stored.dtype]
    alpha = None
    if stored.ndim == 2:
        rgb = cv2.cvtColor(stored, cv2.COLOR_GRAY2RGB)
    elif stored.shape[2] == 4:
        rgb, alpha = cv2.cvtColor(stored, cv2.COLOR_BGRA2RGB), stored[..., 3]
    else:
        rgb = cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)

    def unit(values):
        if scale == 1:  # float formats may hold values outside [0, 1]
            return np.clip(values.astype(np.float32), 0, 1)
        values = values.astype(np.float32)
        values /= np.float32(scale)
        return values

    return Image(unit(rgb), bit_depth, None if alpha is None else unit(alpha), stored.ndim == 2)


def decode_image(data, name='image'):
    """Encoded image bytes -> :class:`Image` (upright by the EXIF orientation).

    Args:
        data (bytes): The encoded file (from disk, an archive or an LMDB).
        name (str): What errors name. Default: ``'image'``.

    Returns:
        Image: float32 RGB in ``[0, 1]``, bit depth, alpha.

    Raises:
        ImageReadError: Empty or undecodable data, or a pixel type or channel count that is not an image's.
    """
    if not data:
        raise ImageReadError(name, 'empty file')
    return _to_image(_decode_stored(data, name, upright=True), name)


def read_image(path):
    """Read any supported image file (:data:`IMAGE_EXTENSIONS`) upright by its EXIF orientation.

    Grey images come back as RGB (``Image.grey`` says so), 16-bit and float images at full precision, alpha
    separately.

    Args:
        path (str | Path): The file.

    Returns:
        Image: ``rgb`` float32 ``(H, W, 3)`` in ``[0, 1]``, ``bit_depth`` (8, 16; 32 for float formats), ``alpha``
        float32 ``(H, W)`` in ``[0, 1]`` or None, ``grey``.

    Raises:
        ImageReadError: (a ``ValueError``) missing, empty, truncated or undecodable file, with one line naming it.
    """
    name = os.fspath(path)
    return decode_image(_read_bytes(path), name)


def encode_image(suffix, rgb, bit_depth=8, alpha=None):
    """float RGB (or grey) in ``[0, 1]`` -> encoded bytes in the format of ``suffix``.

    Args:
        suffix (str): Extension choosing the format, e.g. ``'.png'``.
        rgb (ndarray): ``(H, W, 3)`` RGB, or ``(H, W)`` grey, floats in ``[0, 1]`` (clipped).
        bit_depth (int): 8, 16 (PNG, TIFF, PPM/PGM) or 32 (float: TIFF, EXR, HDR). Default: 8.
        alpha (ndarray | None): ``(H, W)`` opacity in ``[0, 1]`` (formats with alpha: PNG, TIFF, WebP).
            Default: None.

    Returns:
        bytes: The encoded file.

    Raises:
        ValueError: Unknown bit depth, wrong shapes, or a format that cannot store the image.
    """
    if bit_depth not in _DTYPES:
        raise ValueError(f'bit depth must be 8, 16 or 32, got {bit_depth}')
    rgb = np.asarray(rgb)
    if not (rgb.ndim == 2 or rgb.ndim == 3 and rgb.shape[2] == 3):
        raise ValueError(f'image must be (H, W, 3) RGB or (H, W) grey, got {rgb.shape}')
    if alpha is not None and np.shape(alpha) != rgb.shape[:2]:
        raise ValueError(f'alpha must be (H, W) = {rgb.shape[:2]}, got {np.shape(alpha)}')
    dtype = _DTYPES[bit_depth]
    scale = _DEPTHS[np.dtype(dtype)][1]

    def stored(values):
        values = np.clip(np.asarray(values, np.float32), 0, 1) * np.float32(scale)
        return (np.round(values) if scale != 1 else values).astype(dtype)

    image = stored(rgb)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        image = np.dstack((bgr, stored(alpha)))
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix.lower() in _JPEG else []
    try:
        ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(image), params)
    except cv2.error as error:
        ok, reason = False, str(error).strip().splitlines()[-1]
    else:
        reason = 'the encoder failed'
    if not ok:
        raise ValueError(f'cannot write a {bit_depth}-bit{" RGBA" if alpha is not None else ""} image as '
                         f'{suffix!r}: {reason}')
    return encoded.tobytes()


def write_image(path, rgb, bit_depth=8, alpha=None):
    """Write float RGB (or grey) in ``[0, 1]`` to ``path`` atomically, in the format of its extension.

    Args:
        path (str | Path): Destination; its extension chooses the format (JPEG at quality 95).
        rgb (ndarray): ``(H, W, 3)`` RGB, or ``(H, W)`` grey, floats in ``[0, 1]`` (clipped).
        bit_depth (int): 8, 16 or 32 (float). Default: 8.
        alpha (ndarray | None): ``(H, W)`` opacity in ``[0, 1]``. Default: None.

    Raises:
        ValueError: See :func:`encode_image`; nothing is written then.
    """
    write_bytes(path, encode_image(os.path.splitext(os.fspath(path))[1], rgb, bit_depth, alpha))
