"""Small helpers shared by the plugin's sub-packages."""
import importlib
from os import path as osp
from pathlib import Path


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import every ``*<suffix>.py`` next to ``package_file`` so that their registry decorators run (BasicSR's scan).

    Returns:
        list[module]: The imported modules, sorted by file name.
    """
    folder = Path(osp.dirname(osp.abspath(package_file)))
    names = sorted(p.stem for p in folder.glob(f'*{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
