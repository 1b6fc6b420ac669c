"""Shared pytest fixtures: tiny synthetic GoPro-layout trees (with exact flows) and their LMDB databases."""
import os
import shutil
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _make_synthetic_gopro(root, count=6, size=(64, 48), seed=0, split='all', lmdb=True, blur_scale=1.0):
    from sdnet_plugin.data.gopro_layout import create_gopro_lmdb, lmdb_paths, scan_gopro_split
    from sdnet_plugin.data.synthesis import synthesize_dataset
    root = str(root)
    split_dir = os.path.join(root, 'train')
    synthesize_dataset(split_dir, count, size=size, seed=seed, split=split, blur_scale=blur_scale, progress=False)
    keys = [sample['key'] for sample in scan_gopro_split(split_dir)]
    info = {'root': split_dir, 'count': count, 'size': tuple(size), 'keys': keys}
    if lmdb:
        create_gopro_lmdb(split_dir, os.path.join(root, 'lmdb'), 'train', progress=False)
        info['lmdb'] = lmdb_paths(os.path.join(root, 'lmdb'), 'train')
    return info


@pytest.fixture(scope='session')
def synthetic_gopro(tmp_path_factory):
    """A read-only tiny synthetic split shared by the whole session.

    Returns:
        dict: ``root`` (GoPro-layout split folder: ``root/<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png``),
        ``lmdb`` (``{'blur', 'sharp', 'flow'}`` database paths for the LMDB backend), ``keys``, ``count`` (6) and
        ``size`` (``(64, 48)`` = width, height).
    """
    return _make_synthetic_gopro(tmp_path_factory.mktemp('synthetic_gopro'))


@pytest.fixture
def make_synthetic_gopro(tmp_path):
    """Factory for a fresh tree that a test may modify: ``make_synthetic_gopro(count=6, size=(64, 48), seed=0,
    split='all', lmdb=True, blur_scale=1.0)`` -> the same dict as ``synthetic_gopro``."""
    counter = iter(range(1000))

    def make(**kwargs):
        return _make_synthetic_gopro(tmp_path / f'gopro{next(counter)}', **kwargs)

    return make


@pytest.fixture
def experiment():
    """A unique experiment name; BasicSR writes experiments/<name> and results/<name> in the repository root."""
    name = f'pytest_pipeline_{uuid.uuid4().hex[:8]}'
    yield name
    for folder in ('experiments', 'results'):
        shutil.rmtree(REPO / folder / name, ignore_errors=True)
