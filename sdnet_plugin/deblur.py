"""``sdnet-deblur``: restore motion-blurred photos and videos with SDNet.

Examples::

    sdnet-deblur photo.jpg -o out/                     # -> out/photo.jpg
    sdnet-deblur shots/ -r --suffix _sharp -o out/      # whole folder tree, keeping sub-folders
    sdnet-deblur 'clips/*.mp4' -o out/ --compare        # videos frame by frame, plus blurry | restored
    sdnet-deblur photo.png -o out/ --save-offsets       # also out/photo_offsets.png: the estimated blur
    sdnet-deblur photo.jpg -o out/ --onnx sdnet.onnx    # the model written by sdnet-export, in onnxruntime

Outputs keep the input's name, format, bit depth, channels (grey, alpha) and size; videos keep frame rate and
size. Every file is written to a temporary name first and renamed when complete. A file that cannot be processed
is reported on one line and skipped; the exit status is 1 when anything failed.
"""
import argparse
import contextlib
import glob
import heapq
import os
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sdnet_plugin import precision
from sdnet_plugin.inference import (DEFAULT_WEIGHTS_NAME, auto_tile_size, find_default_weights, load_network,
                                    make_temp_path, missing_weights_message, tiled_forward, write_atomically)
from sdnet_plugin.utils import decode_upright, error_line
from sdnet_plugin.visualize import render_offset_picture

__all__ = ['Restorer', 'collect_inputs', 'main']
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='sdnet-deblur', description='Deblur photos and videos with SDNet (CVPR 2020).')
    parser.add_argument('inputs', nargs='*', help='image or video files, folders, or glob patterns')
    parser.add_argument('-o', '--output', default='deblurred', help='output folder (default: deblurred)')
    parser.add_argument('-r', '--recursive', action='store_true', help='search folders (and ** globs) recursively')
    parser.add_argument('--suffix', default='', help='added to output file names, e.g. _sharp')
    parser.add_argument('--weights', default=None,
                        help=f'weights file or BasicSR checkpoint (default: shipped {DEFAULT_WEIGHTS_NAME})')
    parser.add_argument('--onnx', default=None, metavar='MODEL',
                        help='run an ONNX model written by sdnet-export in onnxruntime instead of the weights')
    parser.add_argument('--preset', default='base', choices=('tiny', 'small', 'base'),
                        help='SDNet preset, used only when the weights do not record their network (default: base)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--precision', default='auto', choices=('auto', 'bf16', 'fp16', 'fp32'),
                        help='auto: float16 on CUDA, bfloat16 on CPUs that compute it natively (AMX, AVX512-BF16), '
                        'else float32 (default: auto)')
    parser.add_argument('--no-half', action='store_true', help='same as --precision fp32')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch default)')
    parser.add_argument('--tile', type=int, default=None,
                        help='tile side in pixels; 0 disables tiling (default: chosen from free memory)')
    parser.add_argument('--tile-overlap', type=int, default=96, help='context pixels around each tile (default: 96)')
    parser.add_argument('--compare', action='store_true', help='also write blurry | restored side by side')
    parser.add_argument('--save-offsets', action='store_true',
                        help='also write a picture of the sampling points (estimated blur) of one SVD module')
    parser.add_argument('--offset-level', type=int, default=None,
                        help='SVD module to draw: 0 = full resolution, 1 = 1/2, 2 = 1/4 (default: coarsest)')
    args = parser.parse_args(argv)
    if not args.inputs:
        parser.error('give at least one input (file, folder or glob)')
    if args.onnx and (args.weights or args.save_offsets):
        parser.error('--onnx runs the exported model: it takes no --weights and returns no offsets')
    if args.tile is not None and args.tile < 0 or args.tile_overlap < 0:
        parser.error('--tile and --tile-overlap must not be negative')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    return args


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


def select_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise SystemExit(f"sdnet-deblur: error: --device {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('sdnet-deblur: error: --device cuda requested but CUDA is not available')
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f'sdnet-deblur: error: --device {name}: there are {torch.cuda.device_count()} CUDA devices')
    return device


def compute_dtype(name, device):
    """The dtype inference runs in: ``auto`` is float16 on CUDA and :func:`sdnet_plugin.precision.resolve`'s choice
    on the CPU (bfloat16 where native, else float32)."""
    if name == 'auto' and device.type == 'cuda':
        return torch.float16
    return precision.resolve(name, device) or torch.float32


class Restorer:
    """Runs a loaded network on ``(H, W, 3)`` float32 RGB arrays, tiled when they are large.

    On the CPU the network runs channels-last, and in bfloat16 under ``torch.autocast`` (float32 weights, input and
    global residual) when ``dtype`` is bfloat16. On CUDA the network has been converted to ``dtype``.

    Args:
        net (nn.Module): The network (eval mode, on ``device``).
        device (torch.device): Where it runs.
        dtype (torch.dtype): float32, float16 (CUDA) or bfloat16.
        tile (int | None): Tile side; None picks it from free memory, 0 disables tiling. Default: None.
        overlap (int): Context pixels around tiles. Default: 96.
        offset_level (int | None): SVD level whose offsets are returned; None returns none. Default: None.
    """

    def __init__(self, net, device, dtype, tile=None, overlap=96, offset_level=None):
        self.device, self.dtype = device, dtype
        self.autocast = device.type == 'cpu' and dtype == torch.bfloat16
        if isinstance(net, torch.nn.Module):  # (an onnxruntime model runs as exported)
            if device.type == 'cpu':
                net = net.to(memory_format=torch.channels_last)
            elif dtype == torch.bfloat16:
                net = net.bfloat16()
        self.net = net
        self.overlap = overlap
        if tile is None:
            bytes_per_pixel = net.bytes_per_pixel() if hasattr(net, 'bytes_per_pixel') else None  # ONNX models
            tile = auto_tile_size(net, device, dtype, overlap, bytes_per_pixel=bytes_per_pixel)
        self.tile = tile
        self.offset_level = offset_level

    def _forward(self, x):
        if self.offset_level is None:
            return {'image': (self.net(x), 1)}
        out, offsets = self.net(x, return_offsets=True)
        entry = next(o for o in offsets if o['level'] == self.offset_level)
        return {'image': (out, 1), 'offset': (entry['offset'], entry['stride'])}

    def offset_geometry(self):
        """``(kernel_size, dilation, stride)`` of the drawn SVD module."""
        return self.net.deform_kernel_size, self.net.deform_dilation, 2**self.offset_level

    @torch.no_grad()
    def __call__(self, rgb, progress=False):
        """
        Args:
            rgb (ndarray): ``(H, W, 3)`` float32 RGB in [0, 1].
            progress (bool): Show a progress bar over tiles. Default: False.

        Returns:
            tuple[ndarray, Tensor | None]: restored ``(H, W, 3)`` float32 RGB in [0, 1], and the chosen module's
            offsets ``(1, 2K, ceil(H/s), ceil(W/s))`` (None without ``offset_level``).
        """
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        x = x.to(self.device, torch.float32 if self.autocast else self.dtype)
        while True:
            try:
                with precision.autocast(self.device, torch.bfloat16 if self.autocast else None):
                    outputs = tiled_forward(self._forward, x, self.tile, self.overlap, progress=progress,
                                            align=getattr(self.net, 'pad_multiple', 1))
                break
            except torch.cuda.OutOfMemoryError:
                # the memory estimate was optimistic (or other processes took memory): retry with smaller tiles
                current = self.tile or max(x.shape[-2:])
                if current <= 64:
                    raise
                self.tile = max(64, current // 2)
                torch.cuda.empty_cache()
        if not torch.isfinite(outputs['image']).all():
            raise InputError('the network produced NaN or infinite values (float16 overflow? try --precision fp32)')
        restored = outputs['image'][0].float().clamp_(0, 1).permute(1, 2, 0).numpy()
        return restored, outputs.get('offset')


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


def output_paths(rel_path, out_dir, suffix, args):
    """Output files of one input: ``{'restored': ..., 'compare': ..., 'offsets': ...}`` (only those requested)."""
    stem = rel_path.stem + suffix
    ext = rel_path.suffix
    folder = Path(out_dir) / rel_path.parent
    paths = {'restored': folder / f'{stem}{ext}'}
    if args.compare:
        paths['compare'] = folder / f'{stem}_compare{ext}'
    if args.save_offsets:
        is_video = ext.lower() in VIDEO_CODECS
        paths['offsets'] = folder / f'{stem}_offsets{ext if is_video else ".png"}'
    return paths


def process_image(path, paths, restorer, progress=True):
    image = read_image(path)
    rgb, alpha, grey = split_image(image)
    restored, offset = restorer(rgb, progress=progress)
    # encode everything before writing anything, so a failure leaves no output
    encoded = {'restored': encode_image(merge_image(restored, alpha, grey, image.dtype), paths['restored'].suffix)}
    if 'compare' in paths:
        side_by_side = np.concatenate((image, merge_image(restored, alpha, grey, image.dtype)), axis=1)
        encoded['compare'] = encode_image(side_by_side, paths['compare'].suffix)
    if 'offsets' in paths:
        picture = render_offset_picture(to_bgr8(rgb), offset, *restorer.offset_geometry())
        encoded['offsets'] = encode_image(picture, '.png')
    for name, data in encoded.items():
        write_atomically(paths[name], data)


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


def process_video(path, paths, restorer):
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


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 some input failed, 2 usage error)."""
    args = parse_args(argv)
    import sdnet_plugin  # noqa: F401  (BasicSR fixes and registries)
    from sdnet_plugin.export import OnnxNetwork

    weights = Path(args.weights) if args.weights else find_default_weights()
    if weights is None and not args.onnx:
        print(missing_weights_message('sdnet-deblur'), file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    try:
        if args.onnx:
            dtype = torch.float32
            net = OnnxNetwork(args.onnx, args.threads, device)
            network_opt, weights = net.network_opt, f'{args.onnx} (onnxruntime)'
        else:
            dtype = compute_dtype('fp32' if args.no_half else args.precision, device)
            net, network_opt = load_network(weights, device, half=dtype == torch.float16, preset=args.preset)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f'sdnet-deblur: error: {error}', file=sys.stderr)
        return 2
    offset_level = None
    if args.save_offsets:
        levels = sorted(getattr(net, 'svd_levels', ()))
        offset_level = levels[-1] if args.offset_level is None and levels else args.offset_level
        if offset_level not in levels:
            print(f'sdnet-deblur: error: --offset-level {args.offset_level} is not one of the network\'s SVD '
                  f'levels {levels}', file=sys.stderr)
            return 2
    restorer = Restorer(net, device, dtype, args.tile, args.tile_overlap, offset_level)
    print(f'sdnet-deblur: {network_opt.get("type")} {network_opt.get("preset", "")} from {weights}, {device} '
          f'{str(dtype).replace("torch.", "")}, tiles up to {restorer.tile} px (+{args.tile_overlap} px context)',
          file=sys.stderr)

    inputs, failures = collect_inputs(args.inputs, args.recursive)
    for pattern, reason in failures:
        tqdm.write(f'sdnet-deblur: {pattern}: {reason}', file=sys.stderr)
    if not inputs:
        print('sdnet-deblur: error: no input files found', file=sys.stderr)
        return 2

    try:
        with termination_as_interrupt():
            return _process_all(inputs, failures, restorer, args)
    except KeyboardInterrupt as error:
        print('sdnet-deblur: interrupted (outputs written so far are complete; no partial file is left)',
              file=sys.stderr)
        return 128 + error.args[0] if isinstance(error, Terminated) else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``args[0]``: the signal number), raised like Ctrl-C so that temporary files are removed."""


@contextlib.contextmanager
def termination_as_interrupt():
    """Within the block, SIGTERM and SIGHUP (``kill``, a closed terminal, a job scheduler) raise :class:`Terminated`
    in the main thread instead of ending the process at once, so cleanup code runs."""
    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _process_all(inputs, failures, restorer, args):
    input_paths = {p.resolve() for p, _ in inputs}
    claimed = {}
    done, start = 0, time.time()
    for path, rel_path in tqdm(inputs, desc='sdnet-deblur', unit='file', disable=len(inputs) < 2):
        try:
            paths = output_paths(rel_path, args.output, args.suffix, args)
            for out in paths.values():
                resolved = out.resolve()
                if resolved in input_paths:
                    raise InputError(f'output {out} would overwrite an input; choose another -o or a --suffix')
                if resolved in claimed:
                    raise InputError(f'output {out} is also the output of {claimed[resolved]}')
            claimed.update({out.resolve(): path for out in paths.values()})
            if path.suffix.lower() in VIDEO_CODECS:
                process_video(path, paths, restorer)
            else:
                process_image(path, paths, restorer, progress=len(inputs) == 1)
            done += 1
        except InputError as error:
            failures.append((path, str(error)))
            tqdm.write(f'sdnet-deblur: {path}: {error}', file=sys.stderr)
        except (OSError, RuntimeError, cv2.error) as error:
            reason = error_line(error)
            failures.append((path, reason))
            tqdm.write(f'sdnet-deblur: {path}: {reason}', file=sys.stderr)
    print(f'sdnet-deblur: {done} restored, {len(failures)} failed, {time.time() - start:.1f} s, '
          f'outputs in {args.output}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
