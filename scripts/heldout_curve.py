"""Held-out gain of a training run's checkpoints against the CPU-hours spent to reach them
(:func:`sdnet_plugin.evaluation.heldout_curve`): a markdown table, a JSON cache and a plot.

Example::

    python scripts/heldout_curve.py experiments/SDNet_light_camera --data datasets/camera/eval --every 2000
"""
from sdnet_plugin import evaluation

__all__ = ['main']


def main(argv=None):
    """The command line: :func:`sdnet_plugin.evaluation.curve_main`."""
    evaluation.curve_main(argv)


if __name__ == '__main__':
    main()
