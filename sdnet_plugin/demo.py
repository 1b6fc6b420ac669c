"""End-to-end demo (``make demo``): synthetic data, LMDB, training, testing, side-by-side pictures and metrics.

Steps, each through the project's own command-line tools:

1. ``datasets_prep/synthesize_gopro.py``: blurry / sharp / flow triplets from scikit-image's photographs, a
   training split and a held-out validation split (whole photographs kept apart).
2. ``datasets_prep/create_lmdb.py``: BasicSR LMDB databases of both splits.
3. ``sdnet_plugin/train.py -opt options/train_sdnet_demo.yml``: fine-tunes the shipped default weights when
   ``weights/sdnet_light_camera.pth`` exists, otherwise trains from scratch.
4. ``sdnet_plugin/test.py -opt options/test_sdnet_demo.yml``: restores the validation set.
5. Pictures ``blurry | restored | sharp`` and the mean PSNR / SSIM (BasicSR's metrics, RGB, crop_border 0) of the
   blurry inputs and of the restored images against the sharp ones.

Usage: ``python -m sdnet_plugin.demo [--train-count N] [--val-count N] [--size WxH] [--scratch]
[--train-options YML --test-options YML]``
"""
import argparse
import json
import os
import subprocess
import sys
import time
from os import path as osp

import cv2
import numpy as np
import yaml

from sdnet_plugin.inference import shipped_weights

ROOT_PATH = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
DATA_DIR = osp.join(ROOT_PATH, 'datasets', 'demo')
TRAIN_OPTIONS = osp.join(ROOT_PATH, 'options', 'train_sdnet_demo.yml')
TEST_OPTIONS = osp.join(ROOT_PATH, 'options', 'test_sdnet_demo.yml')
DEFAULT_WEIGHTS = str(shipped_weights('sdnet_light_camera.pth'))  # the light preset's weights
LABELS = ('blurry', 'restored', 'sharp')
__all__ = ['StepError', 'compare', 'main']


class StepError(Exception):
    """A demo step failed; its own output above says why."""


def run_step(title, args):
    """Run one project command with its output (progress bars, training log) streaming to the terminal."""
    print(f'\n==> [{time.strftime("%H:%M:%S")}] {title}', flush=True)
    start = time.time()
    result = subprocess.run([sys.executable, *args], cwd=ROOT_PATH)
    if result.returncode != 0:
        raise StepError(f'{title} failed (exit code {result.returncode})')
    print(f'    done in {time.time() - start:.0f} s', flush=True)


def network_overrides(weights, network_opt):
    """``--force_yml`` entries that make the option files build the network ``weights`` were trained with (for
    example an earlier version of the preset), so that they load strictly.

    Raises:
        StepError: The weights cannot be read, or hold another architecture than ``network_opt['type']``.
    """
    from sdnet_plugin.inference import load_weights
    try:
        _, stored = load_weights(weights, preset=network_opt.get('preset', 'light'))
    except (FileNotFoundError, ValueError) as error:
        raise StepError(str(error)) from None
    if stored.get('type') != network_opt.get('type'):
        raise StepError(
            f'{shown(weights)} hold a {stored.get("type")} network; the demo trains {network_opt.get("type")}')

    def yml_value(value):
        return f'[{", ".join(map(yml_value, value))}]' if isinstance(value, (list, tuple)) else str(value)

    return [
        f'network_g:{key}={yml_value(value)}' for key, value in stored.items()
        if key != 'type' and network_opt.get(key) != value
    ]


def shown(path):
    """``path`` relative to the repository when inside it, absolute otherwise."""
    relative = osp.relpath(path, ROOT_PATH)
    return path if relative.startswith(os.pardir) else relative


def read_options(path):
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def labelled(image, label):
    """The image with a caption strip on top."""
    strip = np.full((22, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def compare(val_dir, restored_dir, suffix, out_dir):
    """Write ``blurry | restored | sharp`` pictures and measure PSNR / SSIM of blurry and restored images, with the
    held-out evaluation's pairs, reader and metrics (:mod:`sdnet_plugin.evaluation`).

    Args:
        val_dir (str): The GoPro-layout validation split.
        restored_dir (str): Where the test step wrote ``<SEQ>_<stem>_<suffix>.png``.
        suffix (str): The test step's suffix.
        out_dir (str): Folder of the pictures.

    Returns:
        dict: ``images`` (per image metrics) and the means ``psnr_blurry``, ``psnr_restored``, ``ssim_blurry``,
        ``ssim_restored``.
    """
    from sdnet_plugin.evaluation import find_pairs, mean_scores, read_image, score_pair

    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for key, blur_path, sharp_path in find_pairs(val_dir):
        name = key.replace('/', '_')
        restored_path = osp.join(restored_dir, f'{name}_{suffix}.png')
        if not osp.isfile(restored_path):
            raise StepError(f'the test step wrote no {restored_path}')
        blurry, restored, sharp = (read_image(p) for p in (blur_path, restored_path, sharp_path))
        rows.append({'name': name, **score_pair(blurry, restored, sharp)})
        gap = np.full((sharp.shape[0] + 22, 4, 3), 255, np.uint8)
        panels = [labelled(img, label) for img, label in zip((blurry, restored, sharp), LABELS)]
        picture = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        cv2.imwrite(osp.join(out_dir, f'{name}.png'), picture)
    mean, _ = mean_scores(rows)
    # the demo's summary names a value <metric>_<image>
    renamed = {key: '_'.join(key.split('_')[::-1]) for key in mean}
    summary = {'images': [{renamed.get(key, key): value for key, value in row.items()} for row in rows]}
    summary.update((renamed[key], value) for key, value in mean.items())
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--train-count', type=int, default=96, help='training triplets (default 96)')
    parser.add_argument('--val-count', type=int, default=8, help='held-out validation triplets (default 8)')
    parser.add_argument('--size', default='256x256', help='WxH of the synthetic images (default 256x256)')
    parser.add_argument('--workers', type=int, default=1, help='synthesis processes (default 1)')
    parser.add_argument('--weights', default=DEFAULT_WEIGHTS,
                        help='weights to fine-tune from if the file exists (default weights/sdnet_light_camera.pth)')
    parser.add_argument('--scratch', action='store_true', help='train from scratch even if the weights exist')
    parser.add_argument('--train-options', default=TRAIN_OPTIONS, help='default options/train_sdnet_demo.yml')
    parser.add_argument('--test-options', default=TEST_OPTIONS, help='default options/test_sdnet_demo.yml')
    args = parser.parse_args(argv)
    start = time.time()
    train_options, test_options = osp.abspath(args.train_options), osp.abspath(args.test_options)
    train_opt, test_opt = read_options(train_options), read_options(test_options)
    pretrained = None if args.scratch or not osp.isfile(args.weights) else osp.abspath(args.weights)
    lmdb_dir = osp.join(DATA_DIR, 'lmdb')
    try:
        for split, count, seed in (('train', args.train_count, 0), ('val', args.val_count, 1)):
            run_step(f'synthesizing {count} {split} triplets ({args.size}) into {osp.join(DATA_DIR, split)}', [
                'datasets_prep/synthesize_gopro.py', '--out',
                osp.join(DATA_DIR, split), '--count',
                str(count), '--size', args.size, '--seed',
                str(seed), '--split', split, '--workers',
                str(args.workers), '--overwrite'
            ])
            run_step(f'building LMDB {lmdb_dir}/{split}_*.lmdb', [
                'datasets_prep/create_lmdb.py', '--src',
                osp.join(DATA_DIR, split), '--dst', lmdb_dir, '--prefix', split, '--overwrite'
            ] + (['--no-flow'] if split == 'val' else []))

        train_args = ['-m', 'sdnet_plugin.train', '-opt', train_options]
        test_args = ['-m', 'sdnet_plugin.test', '-opt', test_options]
        if pretrained:
            network = network_overrides(pretrained, train_opt['network_g'])
            train_args += ['--force_yml', f'path:pretrain_network_g={pretrained}', *network]
            test_args += ['--force_yml', *network] if network else []
            title = f'fine-tuning SDNet from {shown(pretrained)}'
        else:
            title = f"training SDNet from scratch (no {shown(osp.abspath(args.weights))})"
        run_step(f'{title}: {train_opt["train"]["total_iter"]} iterations ({shown(train_options)})', train_args)
        run_step(f'testing on the held-out validation set ({shown(test_options)})', test_args)

        results_dir = osp.join(ROOT_PATH, 'results', test_opt['name'])
        test_set = test_opt['datasets']['test']
        summary = compare(
            osp.join(DATA_DIR, 'val'), osp.join(results_dir, 'visualization', test_set['name']),
            test_opt['val']['suffix'], osp.join(results_dir, 'side_by_side'))
    except StepError as error:
        sys.exit(f'error: {error}')

    summary.update(pretrained=pretrained, total_iter=train_opt['train']['total_iter'],
                   wall_time_s=round(time.time() - start, 1))
    with open(osp.join(results_dir, 'demo_summary.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    count = len(summary['images'])
    print(f'\nHeld-out validation set: {count} synthetic images ({args.size}), metrics on RGB, crop_border 0')
    print(f'{"":10s}{"PSNR (dB)":>11s}{"SSIM":>9s}')
    print(f'{"blurry":10s}{summary["psnr_blurry"]:11.2f}{summary["ssim_blurry"]:9.4f}')
    print(f'{"restored":10s}{summary["psnr_restored"]:11.2f}{summary["ssim_restored"]:9.4f}')
    print(f'{"gain":10s}{summary["psnr_restored"] - summary["psnr_blurry"]:+11.2f}'
          f'{summary["ssim_restored"] - summary["ssim_blurry"]:+9.4f}')
    if not pretrained:
        print('Trained from scratch: a few CPU minutes are too few to learn deblurring, so expect little or no gain '
              'here; with weights/sdnet_light_camera.pth the demo fine-tunes from them instead.')
    print(f'Pictures (blurry | restored | sharp): {shown(osp.join(results_dir, "side_by_side"))}/')
    print(f'Total time: {summary["wall_time_s"] / 60:.1f} min')


if __name__ == '__main__':
    main()
