import importlib.util
import os
import os.path as osp

import cv2
import lmdb
import numpy as np
import pytest

from sdnet_plugin.data import gopro_layout
from sdnet_plugin.data.flow_io import decode_flow, read_flow

SCRIPT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', 'datasets_prep', 'create_lmdb.py'))
spec = importlib.util.spec_from_file_location('create_lmdb', SCRIPT)
create_lmdb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(create_lmdb)


def _get(db_path, key):
    env = lmdb.open(db_path, readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(key.encode())
    env.close()
    return value


def test_whole_images_round_trip_and_verify(make_synthetic_gopro, tmp_path, capsys):
    tree = make_synthetic_gopro(count=3, lmdb=False)
    dst = str(tmp_path / 'lmdb')
    create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train', '--verify'])
    assert 'verified 9 entries' in capsys.readouterr().out
    paths = gopro_layout.lmdb_paths(dst, 'train')
    keys = [k for k, _ in gopro_layout.read_meta_keys(paths['flow'])]
    assert keys == tree['keys'] and all('.' not in k for k in keys)
    seq, name = keys[1].split('/')
    flow = decode_flow(_get(paths['flow'], keys[1]))
    assert np.array_equal(flow, read_flow(osp.join(tree['root'], seq, 'flow', f'{name}.png')))
    sharp = cv2.imdecode(np.frombuffer(_get(paths['sharp'], keys[1]), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(sharp, cv2.imread(osp.join(tree['root'], seq, 'sharp', f'{name}.png')))
    with pytest.raises(SystemExit, match='exists; pass --overwrite'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'])
    create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train', '--overwrite', '--no-flow'])


def test_sub_images(make_synthetic_gopro, tmp_path):
    tree = make_synthetic_gopro(count=2, size=(64, 48), lmdb=False)
    dst = str(tmp_path / 'lmdb')
    create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'sub', '--crop-size', '32', '--step', '16'])
    paths = gopro_layout.lmdb_paths(dst, 'sub')
    entries = gopro_layout.read_meta_keys(paths['flow'])
    # rows start at 0, 16; columns at 0, 16, 32 -> 6 sub-images per image
    assert len(entries) == 12 and entries[0] == (f'{tree["keys"][0]}_s000', (32, 32, 4))
    seq, name = tree['keys'][0].split('/')
    full = read_flow(osp.join(tree['root'], seq, 'flow', f'{name}.png'))
    assert np.array_equal(decode_flow(_get(paths['flow'], f'{tree["keys"][0]}_s005')), full[16:48, 32:64])
    assert gopro_layout.verify_gopro_lmdb(dst, 'sub', progress=False) == 36


def test_interrupted_run_leaves_no_database(make_synthetic_gopro, tmp_path, monkeypatch):
    tree = make_synthetic_gopro(count=3, lmdb=False)
    dst = tmp_path / 'lmdb'
    real_imencode, calls = cv2.imencode, []

    def failing_imencode(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real_imencode(*args, **kwargs)

    monkeypatch.setattr(gopro_layout.cv2, 'imencode', failing_imencode)
    with pytest.raises(KeyboardInterrupt):
        gopro_layout.create_gopro_lmdb(tree['root'], str(dst), 'train', progress=False)
    assert os.listdir(dst) == []


def test_size_mismatch_is_reported(make_synthetic_gopro, tmp_path):
    tree = make_synthetic_gopro(count=1, lmdb=False)
    seq, name = tree['keys'][0].split('/')
    sharp = osp.join(tree['root'], seq, 'sharp', f'{name}.png')
    cv2.imwrite(sharp, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit, match='sizes disagree .*sharp.*8x8'):
        create_lmdb.main(['--src', tree['root'], '--dst', str(tmp_path / 'l'), '--prefix', 't'])
