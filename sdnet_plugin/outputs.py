"""The output files of one ``sdnet-deblur`` input: their names, and restoring, encoding and writing them (an image,
or a video frame by frame), with the side-by-side comparison and the offset picture when asked for."""
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sdnet_plugin.file_safety import write_bytes
from sdnet_plugin.media import VIDEO_CODECS, InputError, VideoSink, encode_image, read_image, to_bgr8
from sdnet_plugin.visualize import render_offset_picture

__all__ = ['output_paths', 'write_image_outputs', 'write_video_outputs']


def output_paths(rel_path, out_dir, suffix='', compare=False, offsets=False):
    """Output files of one input: ``{'restored': ..., 'compare': ..., 'offsets': ...}`` (only those requested).

    Args:
        rel_path (Path): The input's path relative to what was given (its sub-folder is kept under ``out_dir``).
        out_dir (str | Path): Output folder.
        suffix (str): Added to the output names. Default: ''.
        compare (bool): Also a blurry | restored picture or video. Default: False.
        offsets (bool): Also the offset picture (a video for videos). Default: False.

    Returns:
        dict[str, Path]: Output kind -> path.
    """
    stem = rel_path.stem + suffix
    ext = rel_path.suffix
    folder = Path(out_dir) / rel_path.parent
    paths = {'restored': folder / f'{stem}{ext}'}
    if compare:
        paths['compare'] = folder / f'{stem}_compare{ext}'
    if offsets:
        is_video = ext.lower() in VIDEO_CODECS
        paths['offsets'] = folder / f'{stem}_offsets{ext if is_video else ".png"}'
    return paths


def write_image_outputs(path, paths, restorer, progress=True):
    """Restore the image ``path`` and write the outputs ``paths`` (of :func:`output_paths`), in the input's format,
    bit depth and channels; nothing is written unless every output could be encoded.

    Args:
        path (Path): The input image.
        paths (dict[str, Path]): Its outputs.
        restorer (SDNetRestorer): Restores RGB arrays (with offsets when ``'offsets'`` is asked for).
        progress (bool): Show a progress bar over the tiles. Default: True.
    """
    image = read_image(path)
    restored, offset = restorer(image.rgb, progress=progress)
    # encode everything before writing anything, so a failure leaves no output
    encoded = {'restored': encode_image(paths['restored'].suffix, restored, image.bit_depth, image.alpha, image.grey)}
    if 'compare' in paths:
        alpha = None if image.alpha is None else np.concatenate((image.alpha, image.alpha), axis=1)
        encoded['compare'] = encode_image(paths['compare'].suffix, np.concatenate((image.rgb, restored), axis=1),
                                          image.bit_depth, alpha, image.grey)
    if 'offsets' in paths:
        picture = render_offset_picture(to_bgr8(image.rgb), offset, *restorer.offset_geometry())
        encoded['offsets'] = encode_image('.png', picture[..., ::-1] / np.float32(255))
    for name, data in encoded.items():
        write_bytes(paths[name], data)


def write_video_outputs(path, paths, restorer):
    """Restore the video ``path`` frame by frame into the videos ``paths`` (of :func:`output_paths`), keeping frame
    rate and size, and copy its audio track into them; a line on stderr says when the audio was not copied.

    Args:
        path (Path): The input video.
        paths (dict[str, Path]): Its outputs.
        restorer (SDNetRestorer): Restores RGB arrays (with offsets when ``'offsets'`` is asked for).
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError('cannot open as a video')
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    sinks = {}
    try:
        ok, frame = capture.read()
        if not ok:
            raise InputError('video has no readable frames')
        with tqdm(total=total if total > 0 else None, desc=path.name, unit='frame', leave=False) as bar:
            while ok:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
                restored_rgb, offset = restorer(rgb)
                outputs = {'restored': to_bgr8(restored_rgb)}
                if 'compare' in paths:
                    outputs['compare'] = np.concatenate((frame, outputs['restored']), axis=1)
                if 'offsets' in paths:
                    outputs['offsets'] = render_offset_picture(frame, offset, *restorer.offset_geometry())
                for name, out_frame in outputs.items():
                    if name not in sinks:
                        sinks[name] = VideoSink(paths[name], fps, (out_frame.shape[1], out_frame.shape[0]))
                    sinks[name].write(out_frame)
                bar.update()
                ok, frame = capture.read()
        notes = {sink.commit(audio_source=path) for sink in sinks.values()} - {None}
        sinks.clear()
        for note in sorted(notes):
            tqdm.write(f'sdnet-deblur: {path}: {note}', file=sys.stderr)
    finally:
        capture.release()
        for sink in sinks.values():
            sink.discard()
