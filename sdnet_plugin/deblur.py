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
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from sdnet_plugin.file_safety import NAME_MAX
from sdnet_plugin.inference import (DEFAULT_WEIGHTS_NAME, SDNetRestorer, find_default_weights, inference_dtype,
                                    missing_weights_message)
from sdnet_plugin.media import VIDEO_CODECS, InputError, collect_inputs
from sdnet_plugin.outputs import output_paths, write_image_outputs, write_video_outputs
from sdnet_plugin.utils import error_line, pick_device, preset_names

__all__ = ['main', 'parse_args']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='sdnet-deblur',
                                     description='Deblur photos and videos with SDNet (CVPR 2020).')
    parser.add_argument('inputs', nargs='*', help='image or video files, folders, or glob patterns')
    parser.add_argument('-o', '--output', default='deblurred', help='output folder (default: deblurred)')
    parser.add_argument('-r', '--recursive', action='store_true', help='search folders (and ** globs) recursively')
    parser.add_argument('--suffix', default='', help='added to output file names, e.g. _sharp')
    parser.add_argument('--weights', default=None,
                        help=f'weights file or BasicSR checkpoint (default: shipped {DEFAULT_WEIGHTS_NAME})')
    parser.add_argument('--onnx', default=None, metavar='MODEL',
                        help='run an ONNX model written by sdnet-export in onnxruntime instead of the weights')
    parser.add_argument('--preset', default='base', choices=preset_names(),
                        help='SDNet preset, used only when the weights do not record their network (default: base)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument(
        '--precision', default='auto', choices=('auto', 'bf16', 'fp16', 'fp32'),
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


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 some input failed, 2 usage error)."""
    args = parse_args(argv)
    import sdnet_plugin  # noqa: F401  (BasicSR fixes and registries)

    weights = Path(args.weights) if args.weights else find_default_weights()
    if weights is None and not args.onnx:
        print(missing_weights_message('sdnet-deblur'), file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as error:
        print(f'sdnet-deblur: error: --{error}', file=sys.stderr)
        return 2
    try:
        dtype = torch.float32 if args.onnx else inference_dtype('fp32' if args.no_half else args.precision, device)
        source = {'onnx': args.onnx} if args.onnx else {'weights': weights, 'preset': args.preset}
        offset_level = None
        if args.save_offsets:
            offset_level = 'coarsest' if args.offset_level is None else args.offset_level
        restorer = SDNetRestorer(**source, device=device, dtype=dtype, tile=args.tile, tile_overlap=args.tile_overlap,
                                 offset_level=offset_level, threads=args.threads)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f'sdnet-deblur: error: {error}', file=sys.stderr)
        return 2
    network_opt = restorer.network_opt
    print(
        f'sdnet-deblur: {network_opt.get("type")} {network_opt.get("preset", "")} from {restorer.source}, {device} '
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
            paths = output_paths(rel_path, args.output, args.suffix, args.compare, args.save_offsets)
            for kind, out in paths.items():
                if len(out.name.encode()) > NAME_MAX:  # checked before any output is written
                    raise InputError(f'its {kind} output name would be {len(out.name.encode())} bytes, over the '
                                     f'{NAME_MAX} a file name may have; rename the file or shorten --suffix')
                resolved = out.resolve()
                if resolved in input_paths:
                    raise InputError(f'output {out} would overwrite an input; choose another -o or a --suffix')
                if resolved in claimed:
                    raise InputError(f'output {out} is also the output of {claimed[resolved]}')
            claimed.update({out.resolve(): path for out in paths.values()})
            if path.suffix.lower() in VIDEO_CODECS:
                write_video_outputs(path, paths, restorer)
            else:
                write_image_outputs(path, paths, restorer, progress=len(inputs) == 1)
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
