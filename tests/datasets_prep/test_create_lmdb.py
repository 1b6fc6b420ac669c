import errno
import os
import os.path as osp

import cv2
import lmdb
import numpy as np
import pytest

from sdnet_plugin.data import gopro_layout
from sdnet_plugin.data.flow_io import decode_flow, read_flow
from sdnet_plugin.tools import create_lmdb


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


def _lmdb_names(dst):
    return sorted(os.listdir(dst)) if osp.isdir(dst) else []


@pytest.mark.parametrize('flow', ['3 channels', '8-bit'])
def test_invalid_flow_is_refused(make_synthetic_gopro, tmp_path, flow):
    tree = make_synthetic_gopro(count=2, lmdb=False)
    seq, name = tree['keys'][1].split('/')
    path = osp.join(tree['root'], seq, 'flow', f'{name}.png')
    stored = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    cv2.imwrite(path, stored[..., :3] if flow == '3 channels' else (stored // 257).astype(np.uint8))
    dst = str(tmp_path / 'lmdb')
    with pytest.raises(SystemExit, match=f'error: {path}: not a flow image'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'])
    assert _lmdb_names(dst) == []


def test_failed_verify_keeps_the_previous_databases(make_synthetic_gopro, tmp_path, monkeypatch):
    from basicsr.utils.lmdb_util import LmdbMaker
    old, tree = make_synthetic_gopro(count=2, seed=1, lmdb=False), make_synthetic_gopro(count=2, seed=2, lmdb=False)
    dst = str(tmp_path / 'lmdb')
    create_lmdb.main(['--src', old['root'], '--dst', dst, '--prefix', 'train'])
    before = {kind: _get(path, tree['keys'][0]) for kind, path in gopro_layout.lmdb_paths(dst, 'train').items()}
    real_put = LmdbMaker.put

    def bad_write(self, img_byte, key, img_shape):  # a write that the disk garbles
        real_put(self, img_byte[:50] if key == tree['keys'][1] and 'sharp' in self.lmdb_path else img_byte, key,
                 img_shape)

    monkeypatch.setattr(LmdbMaker, 'put', bad_write)
    with pytest.raises(SystemExit, match=f'error: .*sharp.lmdb:{tree["keys"][1]}: undecodable image'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train', '--overwrite', '--verify'])
    after = {kind: _get(path, tree['keys'][0]) for kind, path in gopro_layout.lmdb_paths(dst, 'train').items()}
    assert after == before
    assert len([n for n in _lmdb_names(dst) if '.lmdb-build-' in n]) == 1  # the failed build is gone
    monkeypatch.undo()
    with pytest.raises(SystemExit, match='exists; pass --overwrite'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'])


def _identity(db_path, key, sources):
    """Which source tree ('old' / 'new') the database entry ``key`` came from, or None without the database."""
    if not osp.isfile(osp.join(db_path, 'data.mdb')):
        return None
    content = _get(db_path, key)
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    return next(name for name, source in sources.items() if np.array_equal(image, source))


def test_switch_to_new_databases_is_all_or_nothing(make_synthetic_gopro, tmp_path, monkeypatch):
    old = make_synthetic_gopro(count=2, seed=1, lmdb=False)
    new = make_synthetic_gopro(count=2, seed=2, lmdb=False)  # same keys, other content
    key = old['keys'][0]
    seq, name = key.split('/')
    sources = {
        kind: {
            label: cv2.imread(osp.join(tree['root'], seq, kind, f'{name}.png'), cv2.IMREAD_UNCHANGED)
            for label, tree in (('old', old), ('new', new))
        } for kind in ('blur', 'sharp', 'flow')
    }
    real_replace, real_rmtree = os.replace, gopro_layout.shutil.rmtree
    for kill_at in range(1, 12):
        dst = str(tmp_path / f'lmdb{kill_at}')
        create_lmdb.main(['--src', old['root'], '--dst', dst, '--prefix', 'train'])
        calls = []

        def killed(*args, real=None, **kwargs):
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(gopro_layout.os, 'replace', lambda *a, **k: killed(*a, real=real_replace, **k))
        monkeypatch.setattr(gopro_layout.shutil, 'rmtree', lambda *a, **k: killed(*a, real=real_rmtree, **k))
        try:
            gopro_layout.create_gopro_lmdb(new['root'], dst, 'train', overwrite=True, progress=False)
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        paths = gopro_layout.lmdb_paths(dst, 'train')
        seen = {_identity(paths[kind], key, sources[kind]) for kind in paths}
        assert seen in ({'old'}, {'new'}), (kill_at, seen)
        create_lmdb.main(['--src', new['root'], '--dst', dst, '--prefix', 'train', '--overwrite'])  # a rerun ends it
        assert {_identity(paths[kind], key, sources[kind]) for kind in paths} == {'new'}
        assert gopro_layout.verify_gopro_lmdb(dst, 'train', progress=False) == 6
        current = os.readlink(osp.join(dst, '.train.lmdb-current'))
        assert sorted(os.listdir(dst)) == sorted(
            ['.train.lmdb-current', current, 'train_blur.lmdb', 'train_flow.lmdb',
             'train_sharp.lmdb'])  # nothing left over


def test_names_with_spaces_are_refused(make_synthetic_gopro, tmp_path):
    tree = make_synthetic_gopro(count=1, lmdb=False)
    seq = tree['keys'][0].split('/')[0]
    os.rename(osp.join(tree['root'], seq), osp.join(tree['root'], 'my clip'))
    dst = str(tmp_path / 'lmdb')
    with pytest.raises(SystemExit, match='error: names must be ASCII without spaces .*my clip/blur/000000.png'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'])
    assert _lmdb_names(dst) == []


@pytest.mark.parametrize('option', [['--crop-size', '0'], ['--crop-size', '32', '--step', '-16'], ['--step', '0']])
def test_bad_crop_options_are_one_line_errors(make_synthetic_gopro, tmp_path, option):
    tree = make_synthetic_gopro(count=1, lmdb=False)
    dst = str(tmp_path / 'lmdb')
    with pytest.raises(SystemExit, match='error: crop size and step must be positive'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'] + option)
    assert _lmdb_names(dst) == []


class _FullDiskFile:
    """A ``meta_info.txt`` on a full disk: flushing it fails."""

    def write(self, *text):
        raise OSError(errno.ENOSPC, 'No space left on device')

    close = write


@pytest.mark.parametrize('failure', ['final commit', 'final commit and meta_info', 'meta_info'])
def test_full_disk_is_one_line(make_synthetic_gopro, tmp_path, monkeypatch, failure):
    from basicsr.utils.lmdb_util import LmdbMaker
    tree = make_synthetic_gopro(count=1, lmdb=False)
    dst = str(tmp_path / 'lmdb')
    real_put = LmdbMaker.put

    def put(self, *args):
        if failure == 'meta_info':
            self.txt_file = _FullDiskFile()
        real_put(self, *args)
        if failure == 'final commit and meta_info':
            self.txt_file = _FullDiskFile()  # every database's meta_info.txt fails to close after the failed commit

    def full_disk(self):
        raise lmdb.DiskError('mdb_txn_commit: No space left on device')

    monkeypatch.setattr(LmdbMaker, 'put', put)
    if failure != 'meta_info':
        monkeypatch.setattr(LmdbMaker, 'close', full_disk)
    with pytest.raises(SystemExit, match=f'error: cannot write the databases in {dst}: .*No space left on device$'):
        create_lmdb.main(['--src', tree['root'], '--dst', dst, '--prefix', 'train'])
    assert _lmdb_names(dst) == []


def test_databases_of_the_earlier_layout_are_replaced(make_synthetic_gopro, tmp_path):
    import shutil
    old, new = make_synthetic_gopro(count=1, seed=1, lmdb=False), make_synthetic_gopro(count=2, seed=2, lmdb=False)
    built, dst = str(tmp_path / 'built'), str(tmp_path / 'lmdb')
    create_lmdb.main(['--src', old['root'], '--dst', built, '--prefix', 'train'])
    for kind, path in gopro_layout.lmdb_paths(built, 'train').items():  # plain folders, as earlier versions wrote
        shutil.copytree(path, gopro_layout.lmdb_paths(dst, 'train')[kind])
    create_lmdb.main(['--src', new['root'], '--dst', dst, '--prefix', 'train', '--overwrite', '--verify'])
    assert all(os.path.islink(p) for p in gopro_layout.lmdb_paths(dst, 'train').values())
    assert gopro_layout.verify_gopro_lmdb(dst, 'train', progress=False) == 6
    assert sorted(n for n in os.listdir(dst) if n.startswith('.')) == sorted(
        ['.train.lmdb-current', os.readlink(os.path.join(dst, '.train.lmdb-current'))])  # the old folders are gone


def test_layout_keys_and_paths_agree_with_the_scanned_tree(synthetic_gopro):
    samples = gopro_layout.scan_gopro_split(synthetic_gopro['root'])
    assert [s['key'] for s in samples] == [gopro_layout.synthetic_key('all', i) for i in range(len(samples))]
    for sample in samples:
        sequence, stem = gopro_layout.split_key(sample['key'])
        assert gopro_layout.sample_key(sequence, stem) == sample['key'] and '.' not in sample['key']
        for kind in gopro_layout.LMDB_KINDS:
            assert gopro_layout.image_path(synthetic_gopro['root'], sample['key'], kind) == sample[kind]
    assert gopro_layout.synthetic_key('val', gopro_layout.FRAMES_PER_SEQUENCE) == 'SYN_val_0001/000000'
    assert gopro_layout.sub_image_key('SEQ/000001', 7) == 'SEQ/000001_s007'
