"""Measure the data pipeline: synthesis speed, re-blur consistency of the triplets, disk vs LMDB loading speed.

    python benchmarks/data_pipeline.py --count 60 --size 256x256 --workers 2 [--figure docs/images/x.png]

Re-blur consistency: PSNR between the stored blurry image and the sharp image re-blurred along its stored flows
(8-bit images, 1/64 px flows, exactly what training reads), against the PSNR of the sharp image itself.
"""
import argparse
import os
import tempfile
import time
from os import path as osp

import cv2
import numpy as np
from basicsr.data import build_dataset  # noqa: E402,I100 (after sdnet_plugin's compatibility fixes)
from basicsr.metrics import calculate_psnr  # noqa: E402

from sdnet_plugin.data.flow_io import read_flow  # noqa: E402
from sdnet_plugin.data.flow_utils import reblur  # noqa: E402
from sdnet_plugin.data.gopro_layout import create_gopro_lmdb, lmdb_paths, scan_gopro_split  # noqa: E402
from sdnet_plugin.data.synthesis import GAMMA, synthesize_dataset  # noqa: E402
from sdnet_plugin.image_io import read_image  # noqa: E402
from sdnet_plugin.visualize import flow_to_color  # noqa: E402


def psnr(a, b):
    """BasicSR's PSNR of two float images in [0, 1] (RGB, no border crop)."""
    return calculate_psnr(a * 255.0, b * 255.0, crop_border=0)


def read_rgb(path):
    return read_image(path).rgb


def reblur_consistency(root):
    rows = {'blur': [], 'blur_gamma': []}
    for sample in scan_gopro_split(root):
        sharp, flow = read_rgb(sample['sharp']), read_flow(sample['flow'])
        for folder, gamma in (('blur', None), ('blur_gamma', GAMMA)):
            blurry = read_rgb(sample['blur'].replace(f'{os.sep}blur{os.sep}', f'{os.sep}{folder}{os.sep}'))
            rows[folder].append((psnr(reblur(sharp, flow, gamma=gamma), blurry), psnr(sharp, blurry)))
    return {k: np.array(v) for k, v in rows.items()}


def loading_speed(dataset, epochs):
    count = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(dataset)):
            dataset[i]
            count += 1
    return count / (time.perf_counter() - start)


def example_figure(root, path, count=3):
    """Rows of sharp | blurry | flow middle->last (flow colours: hue = direction, saturation = length)."""
    rows = []
    for sample in scan_gopro_split(root)[:count]:
        sharp, blurry = cv2.imread(sample['sharp']), cv2.imread(sample['blur'])
        colors, _ = flow_to_color(read_flow(sample['flow'])[..., 2:])
        rows.append(np.concatenate([sharp, blurry, colors], 1))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--count', type=int, default=60)
    parser.add_argument('--size', default='256x256')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--crop', type=int, default=128, help='training crop for the loading test (default 128)')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--figure', default=None, help='save an example figure here')
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    with tempfile.TemporaryDirectory() as tmp:
        root = osp.join(tmp, 'train')
        start = time.perf_counter()
        synthesize_dataset(root, args.count, size=(width, height), workers=args.workers, progress=False)
        synth_rate = args.count / (time.perf_counter() - start)
        print(f'synthesis: {synth_rate:.1f} samples/s at {width}x{height} with {args.workers} worker(s)')
        if args.figure:
            example_figure(root, args.figure)

        scores = reblur_consistency(root)
        print('\n| blurry images | PSNR re-blurred sharp vs blurry | PSNR sharp vs blurry | samples |')
        print('|---|---|---|---|')
        for folder, values in scores.items():
            print(f'| {folder} | {values[:, 0].mean():.2f} dB | {values[:, 1].mean():.2f} dB | {len(values)} |')

        create_gopro_lmdb(root, osp.join(tmp, 'lmdb'), 'train', progress=False)
        paths = lmdb_paths(osp.join(tmp, 'lmdb'), 'train')
        train = dict(phase='train', gt_size=args.crop, use_hflip=True, use_vflip=True, use_rot=True)
        disk = build_dataset(dict(name='disk', type='BlurSharpFlowDataset', dataroot=root, **train))
        lmdb = build_dataset(
            dict(name='lmdb', type='BlurSharpFlowDataset', io_backend={'type': 'lmdb'}, dataroot_lq=paths['blur'],
                 dataroot_gt=paths['sharp'], dataroot_flow=paths['flow'], **train))
        backends = [('disk', disk), ('lmdb', lmdb)]
        if min(width, height) > 512 and args.crop <= 512:
            # common practice for GoPro: 512x512 sub-images with step 256 in the LMDB
            create_gopro_lmdb(root, osp.join(tmp, 'lmdb'), 'sub', crop_size=512, step=256, progress=False)
            sub = lmdb_paths(osp.join(tmp, 'lmdb'), 'sub')
            backends.append(
                ('lmdb, 512px sub-images',
                 build_dataset(
                     dict(name='sub', type='BlurSharpFlowDataset', io_backend={'type': 'lmdb'}, dataroot_lq=sub['blur'],
                          dataroot_gt=sub['sharp'], dataroot_flow=sub['flow'], **train))))
        print(f'\n| backend | samples/s ({args.crop}px crops of {width}x{height} triplets, one process) |')
        print('|---|---|')
        for name, dataset in backends:
            loading_speed(dataset, 1)  # warm the page cache
            print(f'| {name} | {loading_speed(dataset, args.epochs):.0f} |')


if __name__ == '__main__':
    main()
