"""Bi-directional exposure flows for the real GoPro dataset (Nah et al. 2017), written next to ``blur/`` and ``sharp/``.

In ``GOPRO_Large/<split>/GOPRxxxx_yy_zz/``, each blurry image averages ``yy`` consecutive 240 fps frames of
``GOPRO_Large_all/<split>/GOPRxxxx_yy_zz/`` (non-overlapping windows; blurry image ``n`` covers frames
``(n-1)*yy+1 .. n*yy``) and the sharp image is the window's middle frame. For every blurry image this script
checks that mapping by comparing the sharp image with the candidate middle frame (searching nearby frames when it
does not match, and reporting what cannot be matched), then estimates the flows middle -> first and middle -> last
frame of the window (OpenCV's DIS by default, Farneback as an option, or any ``module:function`` estimator).

Without ``GOPRO_Large_all``, ``--approximate`` estimates the flows from the neighbouring sharp images instead
(``yy`` frames apart), scaled by the time ratio (``(yy-1) / (2*yy)`` for odd ``yy``): a constant-velocity
approximation.

Example (``datasets_prep/gopro_flows.py`` takes the same arguments)::

    python -m sdnet_plugin.tools.gopro_flows --gopro datasets/GoPro/GOPRO_Large \\
        --gopro-all datasets/GoPro/GOPRO_Large_all --splits train --workers 2

Flows: ``<SEQ>/flow/NNNNNN.png`` (16-bit PNG, see ``sdnet_plugin/data/flow_io.py``); a report of the mapping goes to
``<gopro>/<split>/flow_report.json``. Existing flows are kept unless ``--overwrite`` (an interrupted run resumes).
"""
import argparse
import importlib
import json
import multiprocessing
import os
import re
import sys
from os import path as osp

import cv2
import numpy as np
from tqdm import tqdm

from sdnet_plugin.data.flow_io import FLOW_MAX, FLOW_MIN, write_flow
from sdnet_plugin.data.gopro_layout import image_path, sample_key
from sdnet_plugin.file_safety import write_text
from sdnet_plugin.image_io import read_image

__all__ = [
    'ESTIMATORS', 'dis_flow', 'farneback_flow', 'load_estimator', 'frames_per_blur', 'expected_middle', 'list_frames',
    'read_rgb', 'match_window', 'plan_split', 'compute_flows', 'summarize', 'main'
]

SEQUENCE_PATTERN = re.compile(r'^GOPR\d+_(\d+)_\d+$')

# ----------------------------------------------------------------------------------------------------------------
# Flow estimators: f(reference_rgb_uint8, target_rgb_uint8) -> (H, W, 2) float32 (dx, dy) such that the point seen
# at p in the reference lies at p + flow(p) in the target.


def _gray(image):
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def dis_flow(reference, target, preset=cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
    """OpenCV's DIS optical flow (Kroeger et al. 2016), medium preset."""
    estimator = cv2.DISOpticalFlow_create(preset)
    return estimator.calc(_gray(reference), _gray(target), None)


def farneback_flow(reference, target):
    """OpenCV's Farneback optical flow (pyramid of 5 levels, window 21)."""
    return cv2.calcOpticalFlowFarneback(_gray(reference), _gray(target), None, 0.5, 5, 21, 5, 7, 1.5, 0)


ESTIMATORS = {'dis': dis_flow, 'farneback': farneback_flow}


def load_estimator(name):
    """``'dis'``, ``'farneback'`` or ``'package.module:function'`` with the signature of :func:`dis_flow`."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    if ':' not in name:
        raise ValueError(f"unknown estimator {name!r}: use 'dis', 'farneback' or 'module:function'")
    module, function = name.split(':', 1)
    return getattr(importlib.import_module(module), function)


# ----------------------------------------------------------------------------------------------------------------
# Window mapping


def frames_per_blur(sequence):
    """``yy`` of ``GOPRxxxx_yy_zz``: the number of 240 fps frames averaged into each blurry image."""
    match = SEQUENCE_PATTERN.match(sequence)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f'sequence name {sequence!r} is not GOPRxxxx_yy_zz')
    return int(match.group(1))


def expected_middle(index, frames):
    """Middle frame of blurry image ``index`` (1-based, windows ``(index-1)*frames+1 .. index*frames``)."""
    return (index - 1) * frames + 1 + frames // 2


def list_frames(folder):
    """``{frame index: path}`` of the PNG frames in a folder."""
    frames = {}
    for name in os.listdir(folder):
        stem, ext = osp.splitext(name)
        if ext.lower() == '.png' and stem.isdigit():
            frames[int(stem)] = osp.join(folder, name)
    return frames


def read_rgb(path):
    """An image file as 8-bit RGB ``(H, W, 3)``, what the flow estimators take."""
    return np.round(read_image(path).rgb * 255).astype(np.uint8)


def mean_abs_difference(a, b):
    if a.shape != b.shape:
        return float('inf')
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


class FrameCache:
    """Reads frames on demand and keeps the few most recent ones."""

    def __init__(self, frames, size=64):
        self.frames, self.size, self.cache = frames, size, {}

    def __call__(self, index):
        if index not in self.cache:
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)))
            self.cache[index] = read_rgb(self.frames[index])
        return self.cache[index]


def match_window(sharp, frame_at, available, guess, frames, search, threshold):
    """Find the middle frame showing ``sharp``: the guess first, then the nearest candidates within ``search``.

    Returns:
        tuple[int | None, float]: The middle frame index (None when nothing within ``threshold`` grey levels whose
        whole window exists) and the smallest mean absolute difference seen.
    """
    half = frames // 2
    best_index, best_diff = None, float('inf')
    candidates = sorted(range(guess - search, guess + search + 1), key=lambda m: (abs(m - guess), m))
    for middle in candidates:
        if not all(i in available for i in (middle - half, middle, middle + (frames - 1 - half))):
            continue
        diff = mean_abs_difference(sharp, frame_at(middle))
        if diff < best_diff:
            best_index, best_diff = middle, diff
        if middle == guess and diff <= threshold:
            break  # the index arithmetic holds: no search needed
    if best_diff > threshold:
        return None, best_diff
    return best_index, best_diff


# ----------------------------------------------------------------------------------------------------------------


def _clip_flow(flow):
    return np.clip(flow, FLOW_MIN, FLOW_MAX).astype(np.float32)


def _compute_flow(task):
    estimator = load_estimator(task['estimator'])
    middle = read_rgb(task['middle'])
    parts = []
    for side in ('first', 'last'):
        if task.get(side) is None:
            parts.append(None)
            continue
        parts.append(estimator(middle, read_rgb(task[side])).astype(np.float32) * task[f'scale_{side}'])
    if parts[0] is None and parts[1] is None:
        raise ValueError(f'no neighbour to estimate the flow of {task["middle"]}')
    # a missing side (sequence end in approximate mode) mirrors the other: constant velocity
    first = parts[0] if parts[0] is not None else -parts[1]
    last = parts[1] if parts[1] is not None else -parts[0]
    write_flow(task['out'], _clip_flow(np.concatenate([first, last], axis=2)))
    return task['out']


def plan_split(gopro_split, all_split=None, estimator='dis', search=None, threshold=2.0, overwrite=False,
               progress=True):
    """Map every blurry image of a GOPRO_Large split to its flow task, verifying the windows.

    Args:
        gopro_split (str): ``GOPRO_Large/<split>``.
        all_split (str | None): ``GOPRO_Large_all/<split>``; None for the approximate mode. Default: None.
        estimator (str): Estimator name (see :func:`load_estimator`). Default: ``'dis'``.
        search (int | None): How many frames around the expected middle to search. Default: None, 2 windows.
        threshold (float): Largest mean absolute difference (grey levels, 0-255) of a match. Default: 2.0.
        overwrite (bool): Recompute existing flows. Default: False.
        progress (bool): Show a progress bar. Default: True.

    Returns:
        tuple[list[dict], dict]: The flow tasks and the report (per sequence: matched, shifted with their offsets,
        unmatched with the best difference found, skipped because their flow exists).
    """
    if not osp.isdir(gopro_split):
        raise FileNotFoundError(f'GoPro split not found: {gopro_split}')
    sequences = sorted(d for d in os.listdir(gopro_split) if osp.isdir(osp.join(gopro_split, d, 'sharp')))
    if not sequences:
        raise FileNotFoundError(f'no <SEQ>/sharp folders in {gopro_split}')
    tasks, report = [], {'mode': 'approximate' if all_split is None else 'exact', 'sequences': {}}
    bar = tqdm(sequences, unit='sequence', desc=f'map {osp.basename(gopro_split)}', disable=not progress)
    for seq in bar:
        frames = frames_per_blur(seq)
        sharp_frames = list_frames(osp.join(gopro_split, seq, 'sharp'))
        entry = {'frames_per_blur': frames, 'matched': 0, 'shifted': {}, 'unmatched': {}, 'existing': 0}
        report['sequences'][seq] = entry
        if all_split is not None:
            all_dir = osp.join(all_split, seq)
            if not osp.isdir(all_dir):
                entry['unmatched'] = {f'{i:06d}': 'sequence missing in GOPRO_Large_all' for i in sorted(sharp_frames)}
                continue
            available = list_frames(all_dir)
            frame_at = FrameCache(available)
            offset = 0  # a shift found once usually holds for the rest of the sequence
        for index in sorted(sharp_frames):
            name = osp.splitext(osp.basename(sharp_frames[index]))[0]
            out = image_path(gopro_split, sample_key(seq, name), 'flow')
            if osp.exists(out) and not overwrite:
                entry['existing'] += 1
                continue
            task = {'estimator': estimator, 'out': out}
            if all_split is None:
                # the window's first / last frame lie frames // 2 and frames - 1 - frames // 2 frames from the
                # middle; the neighbouring sharp images lie a whole window (frames) away
                task.update(middle=sharp_frames[index], first=sharp_frames.get(index - 1),
                            last=sharp_frames.get(index + 1), scale_first=(frames // 2) / frames,
                            scale_last=(frames - 1 - frames // 2) / frames)
                if task['first'] is None and task['last'] is None:
                    entry['unmatched'][name] = 'no neighbouring sharp image'
                    continue
            else:
                guess = expected_middle(index, frames)
                sharp = read_rgb(sharp_frames[index])
                window = search if search is not None else 2 * frames
                middle, diff = match_window(sharp, frame_at, available, guess + offset, frames, window, threshold)
                if middle is None and offset:
                    middle, diff = match_window(sharp, frame_at, available, guess, frames, window, threshold)
                if middle is None:
                    entry['unmatched'][name] = f'no frame within {threshold} grey levels (best {diff:.2f})'
                    continue
                if middle != guess:
                    entry['shifted'][name] = middle - guess
                else:
                    entry['matched'] += 1
                offset = middle - guess
                half = frames // 2
                task.update(middle=available[middle], first=available[middle - half],
                            last=available[middle + frames - 1 - half], scale_first=1.0, scale_last=1.0)
            tasks.append(task)
    return tasks, report


def compute_flows(tasks, workers=1, progress=True):
    """Run the flow tasks (in ``workers`` processes); each flow file is written atomically."""
    bar = tqdm(total=len(tasks), unit='flow', desc='flows', disable=not progress)
    if workers > 1 and len(tasks) > 1:
        method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for _ in pool.imap_unordered(_compute_flow, tasks):
                bar.update(1)
    else:
        for task in tasks:
            _compute_flow(task)
            bar.update(1)
    bar.close()


def summarize(report):
    """One line per split: matched / shifted / unmatched / existing counts."""
    seqs = report['sequences'].values()
    matched = sum(s['matched'] for s in seqs)
    shifted = sum(len(s['shifted']) for s in seqs)
    unmatched = sum(len(s['unmatched']) for s in seqs)
    existing = sum(s['existing'] for s in seqs)
    return (f'{report["mode"]} mode: {matched} windows as expected, {shifted} found at another index, '
            f'{unmatched} unmatched, {existing} flows already present')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--gopro', required=True, help='GOPRO_Large folder (holding train/ and test/)')
    parser.add_argument('--gopro-all', default=None, help='GOPRO_Large_all folder (all 240 fps frames)')
    parser.add_argument('--approximate', action='store_true',
                        help='without GOPRO_Large_all: flows from neighbouring sharp images, scaled by time')
    parser.add_argument('--splits', nargs='+', default=['train', 'test'], help='splits to process (default both)')
    parser.add_argument('--estimator', default='dis', help="'dis' (default), 'farneback' or 'module:function'")
    parser.add_argument('--search', type=int, default=None, help='frames searched around the expected middle '
                        '(default: two windows)')
    parser.add_argument('--match-threshold', type=float, default=2.0,
                        help='largest mean absolute difference (0-255) between sharp image and middle frame')
    parser.add_argument('--workers', type=int, default=1, help='processes computing flows (default 1)')
    parser.add_argument('--overwrite', action='store_true', help='recompute existing flow files')
    args = parser.parse_args(argv)
    if (args.gopro_all is None) == (not args.approximate):
        sys.exit('error: give --gopro-all, or --approximate when GOPRO_Large_all is not available (not both)')
    try:
        load_estimator(args.estimator)
        for split in args.splits:
            all_split = osp.join(args.gopro_all, split) if args.gopro_all else None
            tasks, report = plan_split(
                osp.join(args.gopro, split), all_split, args.estimator, args.search, args.match_threshold,
                args.overwrite)
            compute_flows(tasks, args.workers)
            report_path = osp.join(args.gopro, split, 'flow_report.json')
            write_text(report_path, json.dumps(report, indent=1))
            print(f'{split}: {summarize(report)}; report: {report_path}')
            for seq, entry in report['sequences'].items():
                for name, why in entry['unmatched'].items():
                    print(f'  unmatched {seq}/{name}: {why}')
    except (FileNotFoundError, ValueError, IOError, ImportError, AttributeError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
