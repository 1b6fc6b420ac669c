"""Small helpers shared by the plugin's sub-packages and command-line tools."""
import argparse
import importlib
from os import path as osp
from pathlib import Path

__all__ = ['error_line', 'import_modules_with_suffix', 'parse_size', 'pick_device', 'preset_names']


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import every ``*<suffix>.py`` next to ``package_file`` so that their registry decorators run (BasicSR's scan).

    Returns:
        list[module]: The imported modules, sorted by file name.
    """
    folder = Path(osp.dirname(osp.abspath(package_file)))
    names = sorted(p.stem for p in folder.glob(f'*{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]


def error_line(error):
    """The one line that reports ``error``: the first line of its text (the worker's own message for errors that
    a data-loader worker re-raised with its traceback), or its type name when it has no text."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        return text.splitlines()[-1].split(': ', 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def parse_size(text):
    """``'WIDTHxHEIGHT'`` -> ``(width, height)``, for argparse's ``type=``.

    Args:
        text (str): E.g. ``'1280x720'`` (``X`` works too).

    Returns:
        tuple[int, int]: ``(width, height)``, both positive.

    Raises:
        argparse.ArgumentTypeError: Not two integers separated by ``x``, or not positive.
    """
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WIDTHxHEIGHT, e.g. 1280x720, got {text!r}') from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return width, height


def pick_device(name='auto'):
    """The torch device a command-line ``--device`` names.

    Args:
        name (str | torch.device): ``'auto'`` (CUDA when available, else the CPU), ``'cpu'``, ``'cuda'`` or
            ``'cuda:N'``. Default: ``'auto'``.

    Returns:
        torch.device: The device.

    Raises:
        ValueError: Another device name, or a CUDA device that is not there; one line that begins with
            ``device``, so that commands report it as ``--device ...``.
    """
    import torch
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise ValueError(f"device {str(name)!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device cuda requested but CUDA is not available')
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f'device {name}: there are {torch.cuda.device_count()} CUDA devices')
    return device


def preset_names():
    """Names of the SDNet presets, from the architecture's own table (``SDNET_PRESET_VERSIONS``), for argparse's
    ``choices=``.

    Returns:
        tuple[str]: The preset names, in the table's order.
    """
    from sdnet_plugin.archs.sdnet_arch import SDNET_PRESET_VERSIONS
    return tuple(SDNET_PRESET_VERSIONS)
