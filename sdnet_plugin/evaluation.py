"""Held-out evaluation of SDNet weights on a GoPro-layout folder: mean PSNR / SSIM of blurry and restored images.

The folder is typically rendered by ``datasets_prep/synthesize_gopro.py`` from photographs never used for training
(``datasets/photos/eval`` or ``datasets/photos/val``). Metrics are BasicSR's ``calculate_psnr`` /
``calculate_ssim`` on RGB with ``crop_border`` 0, against the sharp image.

With ``--offset-error`` (folders that hold ``<SEQ>/flow/``), it also measures how well the SVD modules' sampling
points follow the blur: the order-invariant flow-guided offset loss on moving pixels (mean per offset coordinate, in
each module's pixels), of the learned offsets and of the regular grid (zero offsets, which follow no motion).

Images run through :class:`sdnet_plugin.inference.SDNetRestorer`. The command line is
``scripts/eval_heldout.py`` (:func:`main`)::

    python scripts/eval_heldout.py --weights weights/sdnet_base_synthetic.pth --data datasets/synthetic/eval
    python scripts/eval_heldout.py --weights experiments/X/models/net_g_latest.pth --data DIR --json result.json

:func:`heldout_curve` scores the checkpoints of a training run against the CPU time spent to reach each (stored in
its training states); ``scripts/heldout_curve.py`` (:func:`curve_main`) is its command line.
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
import time

import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from tqdm import tqdm

import sdnet_plugin  # noqa: F401  (BasicSR fixes and registries; before any basicsr import)
from sdnet_plugin import image_io, precision
from sdnet_plugin.compat import load_training_state
from sdnet_plugin.data.flow_io import read_flow
from sdnet_plugin.data.gopro_layout import gopro_pairs
from sdnet_plugin.file_safety import atomic_path, write_text
from sdnet_plugin.inference import DEFAULT_WEIGHTS, SDNetRestorer, load_network
from sdnet_plugin.losses.flow_offset_loss import FlowGuidedOffsetLoss
from sdnet_plugin.ops.modulated_deform_conv import ModulatedDeformConv2d
from sdnet_plugin.utils import pick_device, preset_names

__all__ = [
    'curve_main', 'evaluate', 'find_pairs', 'format_curve', 'format_table', 'heldout_curve', 'image_metrics', 'main',
    'mean_scores', 'offset_errors', 'read_image', 'restore', 'run_checkpoints', 'score_pair'
]


def find_pairs(data_root, blur_folder='blur', sharp_folder='sharp'):
    """List ``(name, blurry path, sharp path)`` of a GoPro-layout folder ``<root>/<SEQ>/{blur,sharp}/<file>``
    (:func:`sdnet_plugin.data.gopro_layout.gopro_pairs`), ``name`` being ``SEQ/<stem>``.

    Args:
        data_root (str): The folder.
        blur_folder (str): Blurry sub-folder. Default: ``'blur'``.
        sharp_folder (str): Sharp sub-folder. Default: ``'sharp'``.

    Returns:
        list[tuple[str, str, str]]: The pairs, sorted by blurry path.

    Raises:
        FileNotFoundError: No blurry images, or a blurry image without its sharp counterpart.
    """
    pairs = gopro_pairs(data_root, blur_folder, sharp_folder, image_io.IMAGE_EXTENSIONS)
    if not pairs:
        raise FileNotFoundError(f'no images in {osp.join(data_root, "*", blur_folder)} (expected GoPro layout)')
    for _, blur_path, sharp_path in pairs:
        if not osp.isfile(sharp_path):
            raise FileNotFoundError(f'{blur_path} has no sharp image {sharp_path}')
    return pairs


def read_image(path):
    """Read an image (:func:`sdnet_plugin.image_io.read_image`) as HxWx3 uint8 BGR: 16-bit and float inputs are
    rounded to 8 bits, alpha is dropped, grey is repeated."""
    rgb = image_io.read_image(path).rgb
    return np.round(rgb[..., ::-1] * np.float32(255)).astype(np.uint8)


def restore(restorer, image_bgr, return_offsets=False):
    """Restore one image with a restorer.

    Args:
        restorer (SDNetRestorer): Runs the network (precision, tiles).
        image_bgr (ndarray): Blurry image with shape (H, W, 3), uint8 BGR.
        return_offsets (bool): Run the image whole (tiles would cut the offsets up) and return the SVD modules'
            offsets (``SDNet(x, return_offsets=True)``) of the same forward pass too. Default: False.

    Returns:
        ndarray | tuple[ndarray, list[dict]]: The restored image with shape (H, W, 3), uint8 BGR (and the offsets).
    """
    lq = img2tensor(image_bgr.astype(np.float32) / 255.0, bgr2rgb=True, float32=True).unsqueeze(0)
    if return_offsets:
        output, offsets = restorer.forward_offsets(lq)
    else:
        output, offsets = restorer.forward(lq)['image'], None
    restored = tensor2img(output.float(), rgb2bgr=True, out_type=np.uint8, min_max=(0, 1))
    return (restored, offsets) if return_offsets else restored


OFFSET_ERROR = FlowGuidedOffsetLoss(loss_weight=1.0, criterion='l1', motion_threshold=0.5, order_invariant=True)


@torch.no_grad()
def offset_errors(offsets, flow):
    """Offset error (:data:`OFFSET_ERROR`) of the net's sampling points and of the regular grid.

    Args:
        offsets (list[dict]): The SVD modules' offsets of one image, as ``SDNet(x, return_offsets=True)`` gives them.
        flow (ndarray): ``(H, W, 4)`` flow of the image, in pixels.

    Returns:
        tuple[float, float]: Learned and regular-grid errors.
    """
    offsets = [dict(item, offset=item['offset'].float()) for item in offsets]
    flow = torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0).to(offsets[0]['offset'].device)
    grid = [dict(item, offset=torch.zeros_like(item['offset'])) for item in offsets]
    return float(OFFSET_ERROR(offsets, flow)), float(OFFSET_ERROR(grid, flow))


def image_metrics(image, reference):
    """BasicSR PSNR / SSIM on RGB (all channels, crop_border 0) of two HxWx3 uint8 images."""
    return {
        'psnr': float(calculate_psnr(image, reference, crop_border=0, input_order='HWC', test_y_channel=False)),
        'ssim': float(calculate_ssim(image, reference, crop_border=0, input_order='HWC', test_y_channel=False)),
    }


def score_pair(blurry, restored, sharp):
    """Metrics (:func:`image_metrics`) of a blurry image and of its restoration against the sharp image.

    Args:
        blurry (ndarray): Blurry image with shape (H, W, 3), uint8.
        restored (ndarray): Restored image with shape (H, W, 3), uint8.
        sharp (ndarray): Sharp image with shape (H, W, 3), uint8.

    Returns:
        dict[str, float]: ``blurry_psnr``, ``blurry_ssim``, ``restored_psnr``, ``restored_ssim``.
    """
    before, after = image_metrics(blurry, sharp), image_metrics(restored, sharp)
    return {
        'blurry_psnr': before['psnr'],
        'blurry_ssim': before['ssim'],
        'restored_psnr': after['psnr'],
        'restored_ssim': after['ssim']
    }


def mean_scores(per_image):
    """Means of per-image rows (:func:`score_pair`'s values, and any other numbers they hold).

    Args:
        per_image (list[dict]): One row per image; ``name`` is left out of the means.

    Returns:
        tuple[dict, dict]: The mean of every key, and the summary ``count``, ``blurry`` / ``restored`` / ``gain``
        (``psnr``, ``ssim``).
    """
    mean = {key: float(np.mean([row[key] for row in per_image])) for key in per_image[0] if key != 'name'}
    return mean, {
        'count': len(per_image),
        'blurry': {
            'psnr': mean['blurry_psnr'],
            'ssim': mean['blurry_ssim']
        },
        'restored': {
            'psnr': mean['restored_psnr'],
            'ssim': mean['restored_ssim']
        },
        'gain': {
            'psnr': mean['restored_psnr'] - mean['blurry_psnr'],
            'ssim': mean['restored_ssim'] - mean['blurry_ssim']
        },
    }


def evaluate(net, pairs, device='cpu', tile_size=0, tile_overlap=96, offset_error=False, dtype=None,
             compare_fp32=False):
    """Mean metrics of blurry vs sharp and restored vs sharp over ``pairs``.

    Args:
        net (nn.Module): Restoration network (eval mode).
        pairs (list[tuple[str, str, str]]): From :func:`find_pairs`.
        device (str | torch.device): Device of ``net``. Default: 'cpu'.
        tile_size (int): Tiled inference above this size (0: whole image). Default: 0.
        tile_overlap (int): Context pixels around each tile. Default: 96.
        offset_error (bool): Also measure :func:`offset_errors` against ``<SEQ>/flow/<name>.png`` (images then run
            whole, without tiles); ignored for a network that returns no offsets (SDNet without SVD modules).
            Default: False.
        dtype (torch.dtype | None): Autocast dtype (:mod:`sdnet_plugin.precision`); None runs float32. Default: None.
        compare_fp32 (bool): Also restore in float32 and measure the agreement (PSNR between the two restored
            images) and the float32 gain. Default: False.

    Returns:
        dict: ``count``, ``blurry``/``restored``/``gain`` (``psnr``, ``ssim``), ``seconds_per_image``, ``per_image``
        (name and the values) and, with ``offset_error``, ``offset_error`` (``learned``, ``grid``).
    """
    restorer = SDNetRestorer(net=net, device=device, dtype=dtype, tile=tile_size, tile_overlap=tile_overlap)
    reference = SDNetRestorer(net=net, device=device, tile=tile_size, tile_overlap=tile_overlap)
    per_image = []
    start = time.time()
    for name, blur_path, sharp_path in tqdm(pairs, desc='evaluate', unit='img'):
        blurry, sharp = read_image(blur_path), read_image(sharp_path)
        if blurry.shape != sharp.shape:
            raise ValueError(f'{blur_path} is {blurry.shape[1]}x{blurry.shape[0]} but its sharp image is '
                             f'{sharp.shape[1]}x{sharp.shape[0]}')
        if offset_error:
            restored, offsets = restore(restorer, blurry, return_offsets=True)
            offset_error = bool(offsets)  # the same network for every image: decided on the first one
        else:
            restored = restore(restorer, blurry)
        row = {'name': name, **score_pair(blurry, restored, sharp)}
        if compare_fp32:
            fp32_restored = restore(reference, blurry)
            row['fp32_restored_psnr'] = image_metrics(fp32_restored, sharp)['psnr']
            row['agreement_psnr'] = image_metrics(restored, fp32_restored)['psnr']
        if offset_error:
            flow_path = osp.join(osp.dirname(osp.dirname(blur_path)), 'flow', osp.basename(blur_path))
            flow = read_flow(flow_path)
            if flow.shape[:2] != blurry.shape[:2]:
                raise ValueError(f'{flow_path} is {flow.shape[1]}x{flow.shape[0]} but its blurry image is '
                                 f'{blurry.shape[1]}x{blurry.shape[0]}')
            row['offset_error'], row['grid_offset_error'] = offset_errors(offsets, flow)
        per_image.append(row)
    mean, summary = mean_scores(per_image)
    result = dict(summary, seconds_per_image=(time.time() - start) / len(per_image), per_image=per_image)
    if offset_error:
        result['offset_error'] = {'learned': mean['offset_error'], 'grid': mean['grid_offset_error']}
    if compare_fp32:
        result['fp32'] = {
            'gain_psnr': mean['fp32_restored_psnr'] - mean['blurry_psnr'],
            'agreement_psnr': mean['agreement_psnr'],
            'min_agreement_psnr': min(row['agreement_psnr'] for row in per_image)
        }
    return result


def format_table(result):
    """Markdown table of the mean metrics."""
    lines = [f'| {result["count"]} images | PSNR (dB) | SSIM |', '| --- | ---: | ---: |']
    for row in ('blurry', 'restored'):
        lines.append(f'| {row} vs sharp | {result[row]["psnr"]:.2f} | {result[row]["ssim"]:.4f} |')
    lines.append(f'| gain | {result["gain"]["psnr"]:+.2f} | {result["gain"]["ssim"]:+.4f} |')
    if 'offset_error' in result:
        error = result['offset_error']
        lines.append(f'\nsampling points vs flow (offset error, px): learned {error["learned"]:.3f}, '
                     f'regular grid {error["grid"]:.3f}')
    if 'fp32' in result:
        fp32 = result['fp32']
        lines.append(f'\nagainst float32: outputs agree at {fp32["agreement_psnr"]:.2f} dB PSNR (worst image '
                     f'{fp32["min_agreement_psnr"]:.2f} dB); float32 gain {fp32["gain_psnr"]:+.3f} dB, difference '
                     f'{result["gain"]["psnr"] - fp32["gain_psnr"]:+.3f} dB')
    return '\n'.join(lines)


def run_checkpoints(experiment):
    """The checkpoints of a training run whose training state records its cost (``SDNetModel`` stores it).

    Args:
        experiment (str): Experiment folder (``experiments/<name>``, with ``models/`` and ``training_states/``).

    Returns:
        list[dict]: ``iter``, ``weights`` (``models/net_g_<iter>.pth``), ``cpu_hours`` and ``wall_hours`` per
        checkpoint, by iteration; checkpoints whose state is missing or records no cost are left out.
    """
    rows = []
    for weights in glob.glob(osp.join(experiment, 'models', 'net_g_*.pth')):
        match = re.fullmatch(r'net_g_(\d+)\.pth', osp.basename(weights))
        state_path = osp.join(experiment, 'training_states', f'{match.group(1)}.state') if match else ''
        if not osp.isfile(state_path):
            continue
        try:
            state = load_training_state(state_path)
        except ValueError:  # unreadable (cut short) or refused: no cost to plot against
            continue
        if isinstance(state, dict) and 'cpu_seconds' in state:
            rows.append({
                'iter': int(match.group(1)),
                'weights': weights,
                'cpu_hours': state['cpu_seconds'] / 3600,
                'wall_hours': state.get('wall_seconds', float('nan')) / 3600
            })
    return sorted(rows, key=lambda row: row['iter'])


def heldout_curve(experiment, data, every=1, device='cpu', dtype=None, cache=None):
    """Held-out gain of a run's checkpoints against the CPU-hours spent to reach them.

    Args:
        experiment (str | list[str]): Experiment folder, see :func:`run_checkpoints`; or the folders of one run in
            order, when it was carried over to a changed network in a new folder
            (:func:`sdnet_plugin.train.carry_over_training_state`): their checkpoints form one curve.
        data (str): GoPro-layout held-out folder (:func:`find_pairs`).
        every (int): Score only iterations that are multiples of this (the newest checkpoint of every folder, and
            the first of every folder after the first, always). Default: 1.
        device (str | torch.device): Default: ``'cpu'``.
        dtype (torch.dtype | None): Autocast dtype; None runs float32. Default: None.
        cache (str | None): JSON file of earlier results (rows keyed by weights file and data), read and rewritten
            after each checkpoint, so an interrupted or repeated call scores only new checkpoints. Default: None.

    Returns:
        list[dict]: One row per scored checkpoint: :func:`run_checkpoints`'s keys plus ``blurry``, ``restored`` and
        ``gain`` (``psnr``, ``ssim``) and ``offset_error`` when the folder has flows and the network offsets.
    """
    folders = [experiment] if isinstance(experiment, str) else list(experiment)
    runs = [run_checkpoints(folder) for folder in folders]
    checkpoints = [row for rows in runs for row in rows]
    if not checkpoints:
        raise FileNotFoundError(f'no checkpoint of {" or ".join(folders)} has a training state that records its CPU '
                                'time')
    # Multiples of ``every``, the newest checkpoint, and where a run was carried over: the last checkpoint of a
    # folder and the first of the next.
    chosen = [
        row for n, rows in enumerate(runs) for i, row in enumerate(rows)
        if row['iter'] % every == 0 or i == len(rows) - 1 or (n > 0 and i == 0)
    ]
    done = {}
    if cache and osp.isfile(cache):
        with open(cache, encoding='utf-8') as f:
            done = {(row['weights'], row['data']): row for row in json.load(f)}
    pairs = find_pairs(data)
    with_flow = all(osp.isdir(osp.join(osp.dirname(osp.dirname(blur)), 'flow')) for _, blur, _ in pairs)
    rows = []
    for checkpoint in chosen:
        key = (checkpoint['weights'], data)
        if key not in done:
            net, _ = load_network(checkpoint['weights'], device)
            if precision.use_channels_last('auto', device, dtype):
                net = net.to(memory_format=torch.channels_last)
            offsets = with_flow and any(isinstance(m, ModulatedDeformConv2d) for m in net.modules())
            result = evaluate(net, pairs, device, offset_error=offsets, dtype=dtype)
            done[key] = dict(checkpoint, data=data, **{k: result[k] for k in ('blurry', 'restored', 'gain')})
            if offsets:
                done[key]['offset_error'] = result['offset_error']
            if cache:
                write_text(cache, json.dumps(sorted(done.values(), key=lambda r: (r['data'], r['iter'])), indent=1))
        rows.append(done[key])
    return rows


def format_curve(rows):
    """Markdown table of :func:`heldout_curve`'s rows."""
    lines = [
        '| iteration | CPU-hours | wall-hours | restored PSNR / SSIM | gain PSNR | gain SSIM | offset error |',
        '| ---: | ---: | ---: | --- | ---: | ---: | ---: |'
    ]
    for row in rows:
        offset = f'{row["offset_error"]["learned"]:.3f}' if 'offset_error' in row else ''
        lines.append(f'| {row["iter"]} | {row["cpu_hours"]:.2f} | {row["wall_hours"]:.2f} | '
                     f'{row["restored"]["psnr"]:.2f} / {row["restored"]["ssim"]:.4f} | {row["gain"]["psnr"]:+.3f} | '
                     f'{row["gain"]["ssim"]:+.4f} | {offset} |')
    return '\n'.join(lines)


def curve_main(argv=None):
    """Command line of :func:`heldout_curve` (``scripts/heldout_curve.py``)."""
    parser = argparse.ArgumentParser(description='Held-out gain of a training run\'s checkpoints against the CPU-hours '
                                     'spent to reach them: a table, a JSON cache and a plot.')
    parser.add_argument(
        'experiment', nargs='+',
        help='experiment folder, e.g. experiments/SDNet_light_camera; several folders of one run in '
        'order when it was carried over to a changed network (pack_training_state carry)')
    parser.add_argument('--data', required=True, help='GoPro-layout held-out folder: <data>/<SEQ>/{blur,sharp}/*.png')
    parser.add_argument('--every', type=int, default=2000,
                        help='score iterations that are multiples of this, and the newest (default: 2000)')
    parser.add_argument('--json', default=None,
                        help='results cache (default: <experiment>/heldout_curve.json; only new checkpoints run)')
    parser.add_argument('--plot', default=None, help='plot file (default: <experiment>/heldout_curve.png)')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda[:N] (default: auto)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (default: torch default)')
    parser.add_argument('--precision', default='auto', choices=precision.PRECISIONS,
                        help='auto: bfloat16 where the processor computes it natively, else float32 (default: auto)')
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        if args.every < 1:
            raise ValueError(f'--every must be at least 1, got {args.every}')
        device = pick_device(args.device)
        dtype = precision.resolve(args.precision, device)
        rows = heldout_curve(args.experiment, args.data, args.every, device, dtype, args.json
                             or osp.join(args.experiment[-1], 'heldout_curve.json'))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f'error: {error}')
    from sdnet_plugin.visualize import plot_training_curve
    plot = args.plot or osp.join(args.experiment[-1], 'heldout_curve.png')
    with atomic_path(plot) as temporary:
        plot_training_curve(
            rows, temporary, title=f'{" + ".join(osp.basename(osp.normpath(e)) for e in args.experiment)} on '
            f'{osp.basename(osp.normpath(args.data))}')
    print(format_curve(rows))
    print(f'plot: {plot}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--weights', default=str(DEFAULT_WEIGHTS),
                        help='weights or BasicSR checkpoint (default: weights/sdnet_base_synthetic.pth)')
    parser.add_argument('--data', required=True, help='GoPro-layout folder: <data>/<SEQ>/{blur,sharp}/*.png')
    parser.add_argument('--preset', default='base', choices=preset_names(),
                        help='SDNet preset when the weights store no network options (default: base)')
    parser.add_argument('--blur-folder', default='blur', help='blurry sub-folder: blur or blur_gamma (default: blur)')
    parser.add_argument('--sharp-folder', default='sharp', help='sharp sub-folder (default: sharp)')
    parser.add_argument('--max-images', type=int, default=0, help='evaluate only the first N pairs (default: all)')
    parser.add_argument('--tile-size', type=int, default=0, help='tiled inference tile size (default: 0, whole image)')
    parser.add_argument('--tile-overlap', type=int, default=96, help='tile context in pixels (default: 96)')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda[:N] (default: auto)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (default: torch default)')
    parser.add_argument('--offset-error', action='store_true',
                        help='also compare the sampling points with <SEQ>/flow/ (see above; SDNet only, no tiles)')
    parser.add_argument('--precision', default='auto', choices=precision.PRECISIONS,
                        help='auto: bfloat16 where the processor computes it natively, else float32 (default: auto)')
    parser.add_argument('--compare-fp32', action='store_true',
                        help='also restore in float32 and report how closely the outputs and gains agree')
    parser.add_argument('--json', default=None, metavar='PATH', help="also write the result as JSON ('-': stdout)")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
        dtype = precision.resolve(args.precision, device)
        net, network_opt = load_network(args.weights, device, preset=args.preset)
        if precision.use_channels_last('auto', device, dtype):
            net = net.to(memory_format=torch.channels_last)
        pairs = find_pairs(args.data, args.blur_folder, args.sharp_folder)
        if args.max_images > 0:
            pairs = pairs[:args.max_images]
        result = evaluate(net, pairs, device, args.tile_size, args.tile_overlap, args.offset_error, dtype,
                          args.compare_fp32)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f'error: {error}')
    result = {
        'weights': args.weights,
        'network_g': network_opt,
        'data': args.data,
        'blur_folder': args.blur_folder,
        'precision': precision.name_of(dtype),
        **result
    }
    print(f'weights: {args.weights}  data: {args.data} ({args.blur_folder}), {precision.name_of(dtype)}')
    print(format_table(result))
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == '-':
            print(text)
        else:
            write_text(args.json, text + '\n')


if __name__ == '__main__':
    main()
