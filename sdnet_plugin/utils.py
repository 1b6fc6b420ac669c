"""Small helpers shared by the plugin's sub-packages."""
import importlib
import io
from os import path as osp
from pathlib import Path

import numpy as np


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import every ``*<suffix>.py`` next to ``package_file`` so that their registry decorators run (BasicSR's scan).

    Returns:
        list[module]: The imported modules, sorted by file name.
    """
    folder = Path(osp.dirname(osp.abspath(package_file)))
    names = sorted(p.stem for p in folder.glob(f'*{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]


def error_line(error):
    """The one line that reports ``error``: the first line of its text (the worker's own message for errors that
    a data-loader worker re-raised with its traceback), or its type name when it has no text."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        return text.splitlines()[-1].split(': ', 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


# EXIF orientation -> how to turn the stored pixels upright (PIL's ImageOps.exif_transpose table, on arrays)
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)
}


def decode_upright(data):
    """Decode an encoded image as stored (bit depth, channels: ``cv2.IMREAD_UNCHANGED``) and turn it upright by its
    EXIF orientation, as viewers show it (phones store portrait photos sideways with an orientation tag).

    Args:
        data (bytes): The encoded file.

    Returns:
        ndarray | None: ``(H, W)`` or ``(H, W, C)`` in OpenCV's channel order, None when OpenCV cannot decode it.
    """
    import cv2
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return image
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as pil_image:
            orientation = pil_image.getexif().get(0x0112, 1)
    except Exception:  # no EXIF reader for this format, or no EXIF
        orientation = 1
    turn = _ORIENTATIONS.get(orientation)
    return image if turn is None else np.ascontiguousarray(turn(image))
