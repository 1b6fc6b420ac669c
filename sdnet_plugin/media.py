"""Media files of ``sdnet-deblur``: finding the inputs, image codecs (bit depth, grey, alpha, EXIF orientation) and
videos (OpenCV frames, the audio track copied with PyAV).

Every file is written to a hidden temporary name next to its destination and renamed into place when complete.
"""
import glob
import heapq
import os
from pathlib import Path

import cv2
import numpy as np

from sdnet_plugin.inference import make_temp_path
from sdnet_plugin.utils import decode_upright, error_line

__all__ = [
    'IMAGE_EXTENSIONS', 'InputError', 'VIDEO_CODECS', 'VideoSink', 'collect_inputs', 'copy_audio', 'encode_image',
    'merge_image', 'read_image', 'split_image', 'to_bgr8'
]
IMAGE_EXTENSIONS = {
    '.bmp', '.dib', '.jpg', '.jpeg', '.jpe', '.jp2', '.png', '.webp', '.pbm', '.pgm', '.ppm', '.pnm', '.pxm',
    '.sr', '.ras', '.tif', '.tiff', '.exr', '.hdr', '.pic'
}
# container -> FourCC codes OpenCV's writers accept for it, in order of preference
VIDEO_CODECS = {
    '.mp4': ('mp4v', 'avc1'), '.m4v': ('mp4v', 'avc1'), '.mov': ('mp4v', 'avc1'), '.avi': ('MJPG', 'XVID'),
    '.mkv': ('XVID', 'mp4v', 'MJPG'), '.webm': ('VP80', 'VP90'), '.mpg': ('PIM1', ), '.mpeg': ('PIM1', ),
    '.wmv': ('WMV2', ), '.flv': ('FLV1', )
}
PIXEL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


class InputError(Exception):
    """A problem with one input file, reported on one line; the other inputs go on."""


def collect_inputs(patterns, recursive=False):
    """Expand files, folders and globs into ``(path, relative output path)`` pairs, in a stable order.

    Files inside a given folder keep their sub-folder in the output; patterns matching nothing come back as errors.
    Recursion (folders and ``**`` with ``recursive``) does not enter links to folders; a file reached twice is listed
    once.

    Returns:
        tuple[list[tuple[Path, Path]], list[tuple[str, str]]]: inputs and ``(pattern, reason)`` errors.
    """
    media = IMAGE_EXTENSIONS | set(VIDEO_CODECS)
    inputs, errors = [], []
    seen = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = path.rglob('*') if recursive else path.iterdir()
            files = sorted(p for p in found if p.suffix.lower() in media and not p.is_dir())
            inputs += [(p, p.relative_to(path)) for p in files]
            if not files:
                errors.append((pattern, 'folder has no images or videos' + ('' if recursive else ' (try -r)')))
        elif path.exists() or os.path.islink(pattern):
            inputs.append((path, Path(path.name)))
        elif glob.has_magic(pattern):
            try:
                matches = sorted(_glob(pattern, recursive))
            except (ValueError, OSError) as error:
                errors.append((pattern, f'bad pattern: {error}'))
                continue
            files = [p for p in matches if not p.is_dir()]
            inputs += [(p, Path(p.name)) for p in files]
            if not files:
                errors.append((pattern, 'no file matches'))
        else:
            errors.append((pattern, 'no such file or folder'))
    unique = []
    for path, rel_path in inputs:  # a file reached twice (links, overlapping patterns) is restored once
        key = path.resolve() if path.exists() else path
        if key not in seen:
            seen.add(key)
            unique.append((path, rel_path))
    return unique, errors


def _glob(pattern, recursive):
    """Files matching ``pattern``; with ``recursive``, ``**`` descends into sub-folders but, like folder mode, not
    into links to folders (a link loop would otherwise never end)."""
    if not recursive or '**' not in pattern:
        return [Path(p) for p in glob.glob(pattern)]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return list(Path(*parts[:fixed] or ('.', )).glob(str(Path(*parts[fixed:]))))


def read_image(path):
    """Read an image file as stored (bit depth, channels), upright by its EXIF orientation, raising
    :class:`InputError` with the reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f'cannot read: {error.strerror or error}') from None
    if not data:
        raise InputError('empty file')
    image = decode_upright(data)  # phones store portrait photos sideways, with an EXIF orientation
    if image is None or image.size == 0:
        raise InputError('not a decodable image (truncated, corrupt or not an image)')
    if image.dtype not in PIXEL_SCALE:
        raise InputError(f'unsupported pixel type {image.dtype} (8-bit, 16-bit or float32 images only)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise InputError(f'unsupported number of channels {image.shape[2]}')
    return image


def split_image(image):
    """Stored image -> ``(float32 RGB (H, W, 3) in [0, 1], alpha or None, was_grey)``."""
    scale = PIXEL_SCALE[image.dtype]
    alpha = None
    if image.ndim == 2:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        rgb, alpha = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[..., 3]
    else:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rgb = np.clip(rgb.astype(np.float32) / scale, 0, 1) if scale != 1 else np.clip(rgb, 0, 1)
    return rgb, alpha, image.ndim == 2


def merge_image(rgb, alpha, grey, dtype):
    """Inverse of :func:`split_image`: float RGB in [0, 1] -> stored layout and ``dtype``."""
    scale = PIXEL_SCALE[np.dtype(dtype)]
    values = rgb * scale
    values = np.round(values).astype(dtype) if scale != 1 else values.astype(dtype)
    if grey:
        return cv2.cvtColor(values, cv2.COLOR_RGB2GRAY)
    bgr = cv2.cvtColor(values, cv2.COLOR_RGB2BGR)
    return bgr if alpha is None else np.dstack((bgr, alpha))


def to_bgr8(rgb):
    """float RGB in [0, 1] -> uint8 BGR (for offset pictures and video frames)."""
    return cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def encode_image(image, suffix):
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix.lower() in ('.jpg', '.jpeg', '.jpe') else []
    try:
        ok, encoded = cv2.imencode(suffix, image, params)
    except cv2.error as error:
        raise InputError(f'cannot encode as {suffix}: {str(error).strip().splitlines()[-1]}') from None
    if not ok:
        raise InputError(f'cannot encode as {suffix}')
    return encoded.tobytes()


class VideoSink:
    """A video written to a temporary file next to its destination and renamed into place by :meth:`commit`."""

    def __init__(self, path, fps, frame_size):
        self.path = Path(path)
        self.tmp_path = make_temp_path(self.path)
        self.writer = None
        try:
            for code in VIDEO_CODECS.get(self.path.suffix.lower(), ('mp4v', )):
                writer = cv2.VideoWriter(self.tmp_path, cv2.VideoWriter_fourcc(*code), fps, frame_size)
                if writer.isOpened():
                    self.writer = writer
                    break
                writer.release()
            if self.writer is None:
                raise InputError(f'no OpenCV video encoder for {self.path.suffix} files')
        except BaseException:
            self.discard()
            raise

    def write(self, frame):
        self.writer.write(frame)

    def commit(self, audio_source=None):
        """Finish the video, copy the audio track of ``audio_source`` into it, and rename it into place.

        Returns:
            str | None: Why the audio was not copied, or None.
        """
        self.writer.release()
        note = copy_audio(audio_source, self.tmp_path) if audio_source is not None else None
        os.replace(self.tmp_path, self.path)
        return note

    def discard(self):
        if self.writer is not None:
            self.writer.release()
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)


def _packets(container, stream, output):
    """``(time in seconds, order, output stream, packet)`` of one stream, for merging streams by time."""
    for order, packet in enumerate(container.demux(stream)):
        if packet.dts is not None:
            yield float(packet.dts * packet.time_base), order, output, packet


def copy_audio(source, video_path):
    """Copy (without re-encoding) the first audio track of ``source`` into the video file ``video_path``, in place
    through a temporary file, with PyAV. OpenCV, which writes the restored frames, writes no audio.

    Returns:
        str | None: Why the audio was not copied (no PyAV, a codec the container cannot hold), or None when it was
        copied or ``source`` has none.
    """
    try:
        import av
    except ImportError:
        return "audio not copied: the 'av' package (PyAV) is not installed"
    tmp_path = make_temp_path(video_path)
    try:
        with av.open(str(source)) as audio_in:
            if not audio_in.streams.audio:
                return None
            with av.open(str(video_path)) as video_in, av.open(tmp_path, 'w') as out:
                video, audio = video_in.streams.video[0], audio_in.streams.audio[0]
                streams = (_packets(video_in, video, out.add_stream_from_template(video)),
                           _packets(audio_in, audio, out.add_stream_from_template(audio)))
                for _, _, stream, packet in heapq.merge(*streams, key=lambda item: item[:2]):
                    packet.stream = stream
                    out.mux(packet)
        os.replace(tmp_path, video_path)
        return None
    except Exception as error:  # the video itself is fine: keep it, without audio
        return f'audio not copied: {error_line(error)}'
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
