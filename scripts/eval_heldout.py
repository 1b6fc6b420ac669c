"""Held-out evaluation of SDNet weights on a GoPro-layout folder: mean PSNR / SSIM of blurry and restored images
(:mod:`sdnet_plugin.evaluation`, which documents the metrics and ``--offset-error``).

Example::

    python scripts/eval_heldout.py --weights weights/sdnet_base_synthetic.pth --data datasets/synthetic/eval
    python scripts/eval_heldout.py --weights experiments/X/models/net_g_latest.pth --data DIR --json result.json
"""
from sdnet_plugin import evaluation

__all__ = ['main']


def main(argv=None):
    """The command line: :func:`sdnet_plugin.evaluation.main`."""
    evaluation.main(argv)


if __name__ == '__main__':
    main()
