"""The one atomic-write scheme: final names hold complete files or nothing, temporaries stay out of every scan."""
import glob
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from basicsr.utils import scandir

from sdnet_plugin import file_safety
from sdnet_plugin.file_safety import (atomic_directory, atomic_path, is_temporary, remove_temporaries, save_torch,
                                      temp_path, write_bytes)

REPO = Path(__file__).resolve().parent.parent


def _kill_while_writing(target, statement):
    """Run ``statement`` in a child whose ``os.fsync`` kills it (SIGKILL): after the data is written, before the
    rename. Returns the child's exit status."""
    code = textwrap.dedent(f'''
        import os, signal, sys
        from sdnet_plugin import file_safety
        from sdnet_plugin.file_safety import *
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        target = sys.argv[1]
        {statement}
        ''')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-c', code, str(target)], env=env, timeout=120).returncode


@pytest.mark.parametrize('statement', [
    "write_bytes(target, b'new' * 100000)",
    "save_torch({'new': list(range(1000))}, target)",
])
def test_a_killed_writer_leaves_the_previous_file_and_a_recognisable_temporary(tmp_path, statement):
    target = tmp_path / '7.state'
    target.write_bytes(b'previous complete file')
    assert _kill_while_writing(target, statement) == -signal.SIGKILL
    assert target.read_bytes() == b'previous complete file'
    leftovers = sorted(set(os.listdir(tmp_path)) - {'7.state'})
    assert len(leftovers) == 1 and is_temporary(leftovers[0])
    assert os.path.getsize(tmp_path / leftovers[0]) > 0  # the half-written data went to the temporary name
    assert remove_temporaries(tmp_path) == [str(tmp_path / leftovers[0])]
    assert os.listdir(tmp_path) == ['7.state']


def test_a_killed_writer_leaves_no_file_under_a_new_name(tmp_path):
    assert _kill_while_writing(tmp_path / 'out.png', "write_bytes(target, b'x' * 1000)") == -signal.SIGKILL
    assert not (tmp_path / 'out.png').exists()
    assert all(is_temporary(name) for name in os.listdir(tmp_path))


def test_write_bytes_replaces_and_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / 'sub' / 'report.json'
    write_bytes(target, b'one')  # creates the folder
    write_bytes(str(target), b'two')
    assert target.read_bytes() == b'two' and os.listdir(target.parent) == ['report.json']

    def broken_replace(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(file_safety.os, 'replace', broken_replace)
    with pytest.raises(OSError, match='No space left'):
        write_bytes(target, b'three')
    assert target.read_bytes() == b'two' and os.listdir(target.parent) == ['report.json']


def test_atomic_path_removes_the_temporary_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / 'clip.mp4') as tmp:
            assert tmp.endswith('.partial.mp4') and os.path.dirname(tmp) == str(tmp_path)
            Path(tmp).write_bytes(b'half')
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with atomic_path(tmp_path / 'clip.mp4') as tmp:
        Path(tmp).write_bytes(b'whole')
    assert os.listdir(tmp_path) == ['clip.mp4'] and (tmp_path / 'clip.mp4').read_bytes() == b'whole'


@pytest.mark.parametrize('name, keep_suffix, ending', [
    ('photo.png', True, '.partial.png'),
    ('photo.png', False, '.partial'),
    ('3.state', False, '.partial'),
    ('net_g_5.pth', False, '.partial'),
    ('no_extension', True, '.partial'),
    ('x' * 255, True, '.partial'),
    ('é' * 127 + '.png', True, '.partial.png'),
    ('a.' + 'e' * 250, True, '.partial'),
])
def test_temp_names_are_hidden_siblings_that_fit_and_are_recognised(tmp_path, name, keep_suffix, ending):
    tmp = temp_path(tmp_path / name, keep_suffix=keep_suffix)
    base = os.path.basename(tmp)
    assert os.path.dirname(tmp) == str(tmp_path) and os.path.isfile(tmp) and os.path.getsize(tmp) == 0
    assert base.startswith('.') and base.endswith(ending) and len(base.encode()) <= 255
    assert is_temporary(base) and is_temporary(tmp) and not is_temporary(name)
    assert oct(os.stat(tmp).st_mode & 0o777) == oct(0o666 & ~_umask())
    assert tmp != temp_path(tmp_path / name, keep_suffix=keep_suffix)  # unique


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize('name', [
    'photo.png', '3.state', '.hidden', '.partial', 'a.partial', '.a.partial', 'x.partial.png', '.bashrc',
    'synthesis.json', '.photo.png.tmp', 'out.partial', '.x.abc.partial.png.bak'
])
def test_finished_and_foreign_names_are_not_temporary(name):
    assert not is_temporary(name)


def test_project_scans_never_see_temporaries(tmp_path):
    """glob, filtered listings, BasicSR's scandir (its resume scan) and the training-state scan skip every temporary."""
    states = tmp_path / 'training_states'
    states.mkdir()
    torch.save({'iter': 3}, states / '3.state')
    save_torch({'iter': 3}, states / '3.state')
    temporaries = [
        temp_path(states / '4.state', keep_suffix=False),
        temp_path(tmp_path / 'a.png'),
        temp_path(tmp_path / 'b.png', keep_suffix=False)
    ]
    (tmp_path / 'a.png').write_bytes(b'png')
    with atomic_directory(tmp_path / 'tree') as building:
        Path(building, 'c.png').write_bytes(b'png')
        temporaries.append(building)
        assert sorted(glob.glob(str(tmp_path / '*'))) == [str(tmp_path / 'a.png'), str(states)]
        assert sorted(glob.glob(str(tmp_path / '**' / '*.png'), recursive=True)) == [str(tmp_path / 'a.png')]
        # pathlib's glob and rglob list hidden names (before Python 3.13 and with its defaults since): filter them
        assert sorted(p.name for p in tmp_path.glob('*.png') if not is_temporary(p)) == ['a.png']
        assert sorted(p.name for p in tmp_path.rglob('*.png')
                      if not is_temporary(p.parent) and not is_temporary(p)) == ['a.png']
        assert list(scandir(str(states), suffix='state', recursive=False)) == ['3.state']
        assert sorted(scandir(str(tmp_path), suffix='png', recursive=False)) == ['a.png']
        listed = [name for name in os.listdir(tmp_path) if not is_temporary(name)]
        assert sorted(listed) == ['a.png', 'training_states']
    for tmp in temporaries[:3]:
        assert os.path.exists(tmp) and is_temporary(tmp) and not tmp.endswith('.state')
    from sdnet_plugin.train import pack_training_state
    with pytest.raises(FileNotFoundError, match='net_g_3.pth is missing'):  # found iteration 3, not a temporary
        pack_training_state(str(tmp_path), str(tmp_path / 'packed.pth'))


def test_save_torch_round_trip_and_failure(tmp_path, monkeypatch):
    path = tmp_path / 'net_g_1.pth'
    assert save_torch({'w': torch.arange(4)}, path) is True
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4))
    attempts = []

    def full_disk(obj, f):
        attempts.append(1)
        f.write(b'half')
        raise RuntimeError('PytorchStreamWriter failed writing file\nsecond line')

    monkeypatch.setattr(torch, 'save', full_disk)
    monkeypatch.setattr(file_safety.time, 'sleep', lambda s: None)
    assert save_torch({'w': 1}, path, retries=2) is False
    assert len(attempts) == 2 and os.listdir(tmp_path) == ['net_g_1.pth']
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4))


def test_atomic_directory_is_all_or_nothing(tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(ValueError):
        with atomic_directory(out) as building:
            Path(building, 'half.png').write_bytes(b'x')
            raise ValueError('failed half way')
    assert os.listdir(tmp_path) == []
    with atomic_directory(out) as building:
        assert is_temporary(building) and os.path.dirname(building) == str(tmp_path)
        Path(building, 'one.png').write_bytes(b'1')
        assert not out.exists()
    assert os.listdir(out) == ['one.png'] and os.listdir(tmp_path) == ['out']
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())

    with pytest.raises(FileExistsError, match='exists'):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):  # the caller's last check fails: the previous output stays
        with atomic_directory(out, overwrite=True) as building:
            Path(building, 'two.png').write_bytes(b'2')
            raise RuntimeError('not a previous output')
    assert os.listdir(out) == ['one.png'] and os.listdir(tmp_path) == ['out']
    with atomic_directory(out, overwrite=True) as building:
        Path(building, 'two.png').write_bytes(b'2')
    assert os.listdir(out) == ['two.png'] and os.listdir(tmp_path) == ['out']


def test_atomic_directory_refuses_a_path_that_appeared_meanwhile_and_replaces_files_and_links(tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(FileExistsError):
        with atomic_directory(out):
            out.mkdir()
            (out / 'theirs').write_bytes(b'keep')
    assert os.listdir(out) == ['theirs'] and sorted(os.listdir(tmp_path)) == ['out']
    for old in ('file', 'link'):
        target = tmp_path / old
        if old == 'file':
            target.write_bytes(b'old')
        else:
            target.symlink_to(out)
        with atomic_directory(target, overwrite=True) as building:
            Path(building, 'new').write_bytes(b'new')
        assert target.is_dir() and not target.is_symlink() and os.listdir(target) == ['new']
    assert os.listdir(out) == ['theirs']  # the link was replaced, not the folder it pointed to
    assert not [name for name in os.listdir(tmp_path) if is_temporary(name)]


def test_remove_temporaries_by_name(tmp_path):
    keep = [tmp_path / 'out.lmdb', tmp_path / 'other.png', tmp_path / '.hidden']
    for path in keep:
        path.write_bytes(b'')
    mine = [
        temp_path(tmp_path / 'out.lmdb'),
        temp_path(tmp_path / 'out.lmdb', keep_suffix=False),
        file_safety._temp_dir(tmp_path / 'out.lmdb')
    ]
    Path(mine[2], 'data.mdb').write_bytes(b'x')
    others = [
        temp_path(tmp_path / 'other.png'),
        temp_path(tmp_path / 'out.lmdb.bak', keep_suffix=False),
        temp_path(tmp_path / 'out.png')
    ]
    assert remove_temporaries(tmp_path, name='out.lmdb') == sorted(mine)
    assert all(os.path.exists(p) for p in keep + others)
    assert remove_temporaries(tmp_path) == sorted(others)
    assert sorted(os.listdir(tmp_path)) == ['.hidden', 'other.png', 'out.lmdb']
    assert remove_temporaries(tmp_path / 'missing') == []
