"""Media files of ``sdnet-deblur``: finding the inputs, images (:mod:`sdnet_plugin.image_io`: bit depth, grey, alpha,
EXIF orientation) with one-line errors, and videos (OpenCV frames, the audio track copied with PyAV).

Every file is written to a hidden temporary name next to its destination (:mod:`sdnet_plugin.file_safety`) and
renamed into place when complete.
"""
import glob
import heapq
import os
from pathlib import Path

import cv2
import numpy as np

from sdnet_plugin import image_io
from sdnet_plugin.file_safety import atomic_path, is_temporary, temp_path
from sdnet_plugin.image_io import IMAGE_EXTENSIONS
from sdnet_plugin.utils import error_line

__all__ = [
    'IMAGE_EXTENSIONS', 'InputError', 'VIDEO_CODECS', 'VideoSink', 'collect_inputs', 'copy_audio', 'encode_image',
    'read_image', 'to_bgr8'
]
# container -> FourCC codes OpenCV's writers accept for it, in order of preference
VIDEO_CODECS = {
    '.mp4': ('mp4v', 'avc1'),
    '.m4v': ('mp4v', 'avc1'),
    '.mov': ('mp4v', 'avc1'),
    '.avi': ('MJPG', 'XVID'),
    '.mkv': ('XVID', 'mp4v', 'MJPG'),
    '.webm': ('VP80', 'VP90'),
    '.mpg': ('PIM1', ),
    '.mpeg': ('PIM1', ),
    '.wmv': ('WMV2', ),
    '.flv': ('FLV1', )
}


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
    media = set(IMAGE_EXTENSIONS) | set(VIDEO_CODECS)
    inputs, errors = [], []
    seen = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = path.rglob('*') if recursive else path.iterdir()
            files = sorted(p for p in found
                           if p.suffix.lower() in media and not is_temporary(p.name) and not p.is_dir())
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
    """Read an image file (:func:`sdnet_plugin.image_io.read_image`: upright, RGB in [0, 1], bit depth, alpha),
    raising :class:`InputError` with the reason."""
    try:
        return image_io.read_image(path)
    except image_io.ImageReadError as error:
        raise InputError(error.reason) from None


def to_bgr8(rgb):
    """float RGB in [0, 1] -> uint8 BGR (for offset pictures and video frames)."""
    return cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def encode_image(suffix, rgb, bit_depth=8, alpha=None, grey=False):
    """Encode float RGB in [0, 1] (:func:`sdnet_plugin.image_io.encode_image`), as grey when ``grey``, raising
    :class:`InputError` with the reason.

    Args:
        suffix (str): Extension choosing the format.
        rgb (ndarray): Image with shape (H, W, 3), float RGB in [0, 1].
        bit_depth (int): 8, 16 or 32. Default: 8.
        alpha (ndarray | None): Opacity with shape (H, W), in [0, 1]. Default: None.
        grey (bool): Store one grey channel. Default: False.

    Returns:
        bytes: The encoded file.
    """
    if grey:
        rgb = cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2GRAY)
    try:
        return image_io.encode_image(suffix, rgb, bit_depth, alpha)
    except ValueError as error:
        raise InputError(str(error)) from None


class VideoSink:
    """A video written to a temporary file next to its destination and renamed into place by :meth:`commit`."""

    def __init__(self, path, fps, frame_size):
        self.path = Path(path)
        self.tmp_path = temp_path(self.path)
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
    try:
        with av.open(str(source)) as audio_in:
            if not audio_in.streams.audio:
                return None
            with atomic_path(video_path) as tmp_path:
                with av.open(str(video_path)) as video_in, av.open(tmp_path, 'w') as out:
                    video, audio = video_in.streams.video[0], audio_in.streams.audio[0]
                    streams = (_packets(video_in, video, out.add_stream_from_template(video)),
                               _packets(audio_in, audio, out.add_stream_from_template(audio)))
                    for _, _, stream, packet in heapq.merge(*streams, key=lambda item: item[:2]):
                        packet.stream = stream
                        out.mux(packet)
        return None
    except Exception as error:  # the video itself is fine: keep it, without audio
        return f'audio not copied: {error_line(error)}'
