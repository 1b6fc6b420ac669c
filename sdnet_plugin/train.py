"""Train with BasicSR's pipeline and the plugin's registries: ``python sdnet_plugin/train.py -opt OPTIONS.yml``.

Accepts BasicSR's arguments (``--auto_resume``, ``--launcher pytorch`` under ``torchrun``, ``--debug``,
``--force_yml``). Works from any working directory: experiments, logs and relative paths inside the option file
(datasets, weights) are taken from the repository root.
"""
import importlib
import os
import sys
from os import path as osp

ROOT_PATH = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if __name__ == '__main__' and sys.path and osp.abspath(sys.path[0] or '.') == osp.dirname(osp.abspath(__file__)):
    # run as a script: import the package from the repository, not this folder's modules as top-level ones
    sys.path[0] = ROOT_PATH


def prepare_argv(argv):
    """Make the ``-opt`` path absolute, then work from the repository root (BasicSR resolves paths from there)."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '-opt':
            argv[i + 1] = osp.abspath(argv[i + 1])
    os.chdir(ROOT_PATH)
    return argv


def run_pipeline(name):
    """Run BasicSR's ``basicsr.<name>.<name>_pipeline`` (``train`` or ``test``) with the plugin registered.

    Option mistakes, bad data (unreadable files, missing keys) and a run stopped by non-finite steps end with a
    one-line ``error: ...`` (exit status 1) instead of a traceback.
    """
    sys.argv = prepare_argv(sys.argv)
    import sdnet_plugin  # noqa: F401  (applies the BasicSR fixes and registers the plugin)
    from sdnet_plugin.models.sdnet_model import NonFiniteStop
    from sdnet_plugin.utils import error_line
    pipeline = getattr(importlib.import_module(f'basicsr.{name}'), f'{name}_pipeline')
    try:
        pipeline(ROOT_PATH)
    except (ValueError, OSError, NonFiniteStop) as error:
        sys.exit(f'error: {error_line(error)}')


def main():
    run_pipeline('train')


if __name__ == '__main__':
    main()
