"""Safe file writing: every file and folder the project writes appears complete under its final name, or not at all.

One temporary-name scheme serves the whole project: a hidden sibling of the final path, in the same folder (so the
final ``os.replace`` is a rename on one file system), marked as unfinished by ``.partial``::

    .<stem>.<random>.partial<suffix>    files that keep their extension (encoders choose the format by it)
    .<name>.<random>.partial            files and folders that do not

Scans for finished outputs never see these names: ``glob.glob`` and BasicSR's ``scandir`` (its resume scan of
``*.state`` included) skip hidden names, a name without kept extension ends in ``.partial`` so suffix filters miss
it, and code that lists folders otherwise (``os.listdir``, ``os.scandir``, ``os.walk``, and ``pathlib``'s ``glob``,
``rglob`` and ``iterdir``, which list hidden names) filters with :func:`is_temporary`. Leftovers of a killed run
are found by :func:`is_temporary` and removed by :func:`remove_temporaries`.
"""
import contextlib
import os
import re
import shutil
import tempfile
import time
from os import path as osp

__all__ = [
    'NAME_MAX', 'TEMP_MARKER', 'atomic_directory', 'atomic_path', 'is_temporary', 'remove_temporaries', 'save_torch',
    'temp_path', 'write_bytes', 'write_text'
]
NAME_MAX = 255  # bytes in a file name (Linux file systems)
TEMP_MARKER = '.partial'
RANDOM_CHARS = 8  # length of the random part tempfile puts in a name
# hidden, then the final name's stem or name, the random part, the marker, at most one kept extension
_TEMPORARY_NAME = re.compile(r'^\..+\.[^.]+' + re.escape(TEMP_MARKER) + r'(\.[^.]*)?$', re.DOTALL)


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _name_parts(path, keep_suffix):
    """``(prefix, suffix)`` of the temporary name of ``path``, shortened to fit in ``NAME_MAX`` bytes."""
    path = os.fspath(path)
    name = osp.basename(osp.normpath(path))
    if not name or name in ('.', '..'):
        raise ValueError(f'not a file or folder name: {path!r}')
    stem, extension = osp.splitext(name) if keep_suffix else (name, '')
    suffix = f'{TEMP_MARKER}{extension}'
    # '.' + stem + '.' + random characters + suffix must fit in NAME_MAX bytes
    room = NAME_MAX - len(f'..{"x" * RANDOM_CHARS}{suffix}'.encode())
    if room < 1:  # an extension too long to keep
        return _name_parts(path, keep_suffix=False)
    stem = stem.encode()[:room].decode(errors='ignore') or 'x'
    return f'.{stem}.', suffix


def temp_path(path, keep_suffix=True):
    """Create an empty hidden temporary file next to ``path`` (normal file permissions) and return its name.

    Args:
        path (str | Path): The final file. Its folder is created when missing.
        keep_suffix (bool): End the temporary name with ``path``'s extension (``.<stem>.<random>.partial.png``), for
            writers that choose the format by it. Without it the name is ``.<name>.<random>.partial``, which no
            suffix filter (BasicSR's resume scan of ``*.state``) matches. Default: True.

    Returns:
        str: The temporary file; rename it onto ``path`` when complete (``os.replace``), or remove it.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix, suffix = _name_parts(path, keep_suffix)
    fd, tmp_path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates owner-only files
    return tmp_path


def _temp_dir(path):
    """Create an empty hidden temporary folder next to ``path`` (normal permissions) and return its name."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix, suffix = _name_parts(path, keep_suffix=False)
    tmp_dir = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder)
    os.chmod(tmp_dir, 0o777 & ~_umask())  # mkdtemp creates owner-only folders
    return tmp_dir


def is_temporary(name):
    """Whether a file or folder name (or path) is one of :func:`temp_path`'s or :func:`atomic_directory`'s temporary
    names, i.e. an unfinished or abandoned output.

    Args:
        name (str | Path): A name or a path (only its last component counts).

    Returns:
        bool: True for ``.<stem>.<random>.partial`` with or without one kept extension.
    """
    name = osp.basename(osp.normpath(os.fspath(name)))
    return bool(_TEMPORARY_NAME.match(name))


def _remove(path):
    """Remove a file, link or folder tree; missing paths are fine."""
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif osp.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _fsync_folder(folder):
    """Make a rename inside ``folder`` durable (best effort: not every system opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically: into a temporary file in the same folder, flushed to disk, then renamed.

    An interrupted or failed write never leaves a partial file under ``path`` (a previous file stays intact) and
    removes its temporary file.

    Args:
        path (str | Path): Destination file. Its folder is created when missing.
        data (bytes): The content.
    """
    with atomic_path(path) as tmp_path:
        with open(tmp_path, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text, encoding='utf-8'):
    """:func:`write_bytes` of ``text`` encoded with ``encoding`` (default: ``'utf-8'``)."""
    write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_path(path, keep_suffix=True):
    """Context manager for writers that take a file name (``cv2.imwrite``, video writers, ``onnx.save``): yields a
    temporary file name next to ``path``, renamed onto ``path`` when the block succeeds and removed when it raises.

    Args:
        path (str | Path): Destination file. Its folder is created when missing.
        keep_suffix (bool): See :func:`temp_path`. Default: True.

    Yields:
        str: The temporary file (exists, empty); write it completely, by name.
    """
    tmp_path = temp_path(path, keep_suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        _remove(tmp_path)
        raise
    _fsync_folder(osp.dirname(osp.abspath(os.fspath(path))))


def save_torch(obj, path, retries=3):
    """``torch.save`` to ``path`` through a temporary file in the same folder, so ``path`` is never truncated.

    The temporary name ends in ``.partial``: BasicSR's resume scan (``*.state``) never picks it up. A failed attempt
    (full disk, I/O error) is logged as a warning and retried after a second; giving up is a warning too, as in
    BasicSR, so a training run survives a checkpoint it could not write.

    Args:
        obj (object): What to save.
        path (str | Path): Destination file.
        retries (int): Attempts before giving up with a warning (BasicSR also only warns). Default: 3.

    Returns:
        bool: Whether the file was written.
    """
    import torch
    from basicsr.utils import get_root_logger

    from sdnet_plugin.utils import error_line
    path = os.fspath(path)
    for attempt in range(1, retries + 1):
        try:
            with atomic_path(path, keep_suffix=False) as tmp_path:
                with open(tmp_path, 'wb') as f:
                    torch.save(obj, f)
                    f.flush()
                    os.fsync(f.fileno())
            return True
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            get_root_logger().warning(f'Could not save {path} (attempt {attempt}/{retries}): {error_line(error)}')
            time.sleep(1)
    get_root_logger().warning(f'Giving up saving {path}; the previous checkpoints are intact.')
    return False


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Context manager that builds a folder all-or-nothing: yields an empty temporary folder next to ``path``, which
    is renamed to ``path`` when the block succeeds and removed when it raises.

    ``path`` must not exist unless ``overwrite``; it is checked on entry and again at the end. With ``overwrite`` an
    existing ``path`` (folder, file or link) is renamed aside, the new folder renamed into place, and the old one
    removed: the switch takes two renames, and a kill between them leaves both trees under temporary names, never a
    mix. Deciding whether an existing ``path`` may be replaced (is it a recognisable previous output?) is the
    caller's: check before entering and once more as the last statement of the block, where it still raises before
    anything is replaced.

    Args:
        path (str | Path): The final folder. Its parent is created when missing.
        overwrite (bool): Replace an existing ``path``. Default: False.

    Yields:
        str: The temporary folder (hidden, ``.<name>.<random>.partial``) to fill.

    Raises:
        FileExistsError: ``path`` exists and not ``overwrite``.
    """
    path = osp.abspath(os.fspath(path))

    def check():
        if osp.lexists(path) and not overwrite:
            raise FileExistsError(f'{path} exists; refusing to replace it')

    check()
    tmp_dir = _temp_dir(path)
    try:
        yield tmp_dir
        check()
        aside = None
        if osp.lexists(path):
            aside = _temp_dir(path)
            if not osp.isdir(path) or osp.islink(path):
                os.rmdir(aside)  # a file or link cannot replace a folder: take over its unique name
            os.replace(path, aside)
        try:
            os.replace(tmp_dir, path)
        except BaseException:
            if aside is not None:
                os.replace(aside, path)  # put the previous output back
            raise
    except BaseException:
        _remove(tmp_dir)
        raise
    _fsync_folder(osp.dirname(path))
    if aside is not None:
        _remove(aside)


def remove_temporaries(folder, name=None):
    """Remove the temporary files and folders (:func:`is_temporary`) that interrupted runs left in ``folder``.

    Only call it where no other process is writing into ``folder`` (their files in progress would go too).

    Args:
        folder (str | Path): The folder (not searched recursively); a missing folder has none.
        name (str | None): Remove only the temporaries of this final file or folder name (``out.lmdb`` matches
            ``.out.lmdb.<random>.partial`` and ``.out.<random>.partial.lmdb``). Default: None, all of them.

    Returns:
        list[str]: The removed paths, sorted.
    """
    folder = os.fspath(folder)
    if not osp.isdir(folder):
        return []
    prefixes = None
    if name is not None:
        prefixes = tuple({_name_parts(name, keep)[0] for keep in (True, False)})
    removed = []
    for entry in sorted(os.listdir(folder)):
        if is_temporary(entry) and (prefixes is None or _matches(entry, name, prefixes)):
            _remove(osp.join(folder, entry))
            removed.append(osp.join(folder, entry))
    return removed


def _matches(entry, name, prefixes):
    """Whether the temporary ``entry`` belongs to the final ``name`` (its prefix, then only the random part)."""
    extension = osp.splitext(name)[1]
    for prefix in prefixes:
        if not entry.startswith(prefix):
            continue
        rest = entry[len(prefix):]
        for suffix in (TEMP_MARKER, f'{TEMP_MARKER}{extension}'):
            if rest.endswith(suffix) and '.' not in rest[:-len(suffix)] and rest[:-len(suffix)]:
                return True
    return False
