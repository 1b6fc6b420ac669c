"""Turn a GoPro-layout split (real or synthetic) into BasicSR LMDB databases of blurry, sharp and flow images.

Example (from anywhere; ``datasets_prep/create_lmdb.py`` takes the same arguments)::

    python -m sdnet_plugin.tools.create_lmdb --src datasets/GoPro/train --dst datasets/GoPro/lmdb --prefix train \\
        --crop-size 512 --step 256 --verify

Writes ``DST/PREFIX_blur.lmdb``, ``DST/PREFIX_sharp.lmdb`` and ``DST/PREFIX_flow.lmdb`` (keys ``SEQ/NNNNNN``): links
into a hidden build folder, switched all at once when the build (and ``--verify``) succeeded.
"""
import argparse
import sys

from sdnet_plugin.data.gopro_layout import create_gopro_lmdb

__all__ = ['main']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', required=True, help='split folder: SRC/<SEQ>/{blur,sharp,flow}/NNNNNN.png')
    parser.add_argument('--dst', required=True, help='output folder for the databases')
    parser.add_argument('--prefix', required=True, help='database name prefix, e.g. train')
    parser.add_argument('--blur-folder', default='blur', choices=('blur', 'blur_gamma'),
                        help='which blurry images to store (default blur)')
    parser.add_argument('--no-flow', action='store_true', help='store only blurry and sharp images')
    parser.add_argument('--crop-size', type=int, default=None, help='crop into sub-images of this size first')
    parser.add_argument('--step', type=int, default=256, help='step between sub-images (default 256)')
    edge = 'add an edge-aligned sub-image when more than this many pixels remain (default 0)'
    parser.add_argument('--thresh-size', type=int, default=0, help=edge)
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level (default 1)')
    parser.add_argument('--verify', action='store_true',
                        help='re-read and decode every key before the new databases replace any old ones')
    parser.add_argument('--overwrite', action='store_true', help='replace existing databases')
    args = parser.parse_args(argv)
    use_flow = not args.no_flow
    try:
        result = create_gopro_lmdb(args.src, args.dst, args.prefix, args.blur_folder, use_flow, args.crop_size,
                                   args.step, args.thresh_size, args.compress_level, args.overwrite, verify=args.verify)
        print(f'wrote {len(result["keys"])} keys to ' + ', '.join(result[k]
                                                                  for k in ('blur', 'sharp', 'flow') if k in result))
        if args.verify:
            print(f'verified {result["verified"]} entries')
    except (FileExistsError, FileNotFoundError, ValueError, IOError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
