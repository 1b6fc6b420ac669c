"""Synthesise GoPro-style (blurry, sharp, exact flow) triplets from real photographs.

Example (from anywhere; ``datasets_prep/synthesize_gopro.py`` takes the same arguments)::

    python -m sdnet_plugin.tools.synthesize_gopro --out datasets/synthetic/train --count 150 --split train --workers 2
    python -m sdnet_plugin.tools.synthesize_gopro --out datasets/synthetic/val --count 20 --split val --size 320x240
    python -m sdnet_plugin.tools.synthesize_gopro --out datasets/synthetic/cam --count 150 --realism camera \\
        --without jpeg

Writes ``OUT/<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png`` plus ``OUT/synthesis.json``; see docs/data.md.
"""
import argparse
import sys
import time

from sdnet_plugin.data.scene_motion import CAMERA_FEATURES, REALISM_CHOICES
from sdnet_plugin.data.synthesis_writer import synthesize_dataset
from sdnet_plugin.utils import parse_size

__all__ = ['parse_features', 'main']


def parse_features(text):
    names = tuple(n.strip() for n in text.split(',') if n.strip())
    unknown = [n for n in names if n not in CAMERA_FEATURES]
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown feature {unknown[0]!r}; choose from {", ".join(CAMERA_FEATURES)}')
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='output folder (GoPro layout)')
    parser.add_argument('--count', type=int, required=True, help='number of samples')
    parser.add_argument('--photos', default=None, help="folder of photographs (recursive); default: scikit-image's")
    parser.add_argument('--size', type=parse_size, default=(256, 256), help='WxH of every sample (default 256x256)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--workers', type=int, default=1, help='worker processes (default 1)')
    parser.add_argument('--split', choices=('train', 'val', 'all'), default='all',
                        help='disjoint photo partition to draw from (default all)')
    parser.add_argument('--blur-scale', type=float, default=1.0, help='multiplies every motion (default 1.0)')
    parser.add_argument('--max-blur', type=float, default=60.0,
                        help='cap of each surface\'s first-to-last translation in pixels (default 60)')
    parser.add_argument(
        '--realism', choices=REALISM_CHOICES, default='gopro',
        help='gopro: sub-frames averaged as GoPro does (default); camera: a handheld camera (linear '
        'light with streaking highlights, hand shake, mixed exposures, sensor noise, JPEG)')
    parser.add_argument('--without', type=parse_features, default=(),
                        help=f'camera features to switch off, comma-separated: {",".join(CAMERA_FEATURES)}')
    parser.add_argument(
        '--max-upscale', type=float, default=1.0,
        help='largest scale factor of a photo (default 1.0: never upsampled; a sample whose background photo is too '
        'small is rendered at the largest size that fits, a layer covers only its shape); inf: no limit')
    parser.add_argument('--min-side', type=int, default=256,
                        help='smallest side a sample is reduced to so that its photo fits (default 256)')
    parser.add_argument('--histogram', default=None, help='also save the blur-extent histogram image here')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT if it exists')
    args = parser.parse_args(argv)
    start = time.time()
    try:
        scene = {
            'blur_scale': args.blur_scale,
            'max_blur': args.max_blur,
            'realism': args.realism,
            'without': args.without,
            'max_upscale': args.max_upscale,
            'min_side': args.min_side
        }
        meta = synthesize_dataset(args.out, args.count, args.photos, args.size, args.seed, args.workers, args.split,
                                  args.overwrite, **scene)
    except (FileExistsError, FileNotFoundError, ValueError, IOError) as error:
        sys.exit(f'error: {error}')
    elapsed = time.time() - start
    if args.histogram:
        from sdnet_plugin.visualize import plot_blur_histogram
        plot_blur_histogram(meta, args.histogram, f'Synthetic blur extent ({args.count} samples, '
                            f'{args.size[0]}x{args.size[1]})')
    print(f'wrote {args.count} samples to {args.out} in {elapsed:.1f} s ({args.count / elapsed:.1f} samples/s); '
          f'mean blur extent {meta["blur_extent_mean_px"]:.1f} px; {meta["below_size_share"]:.0%} below '
          f'{args.size[0]}x{args.size[1]}, {meta["upsampled_share"]:.0%} with an upsampled background photo (largest '
          f'scale {meta["scale_max"]:.2f})')


if __name__ == '__main__':
    main()
