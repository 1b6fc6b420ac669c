"""GoPro-layout trees (``<split>/<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png``) and their LMDB form.

The layout itself is defined here once: the folder names (:data:`GOPRO_FOLDERS`), sample keys ``<SEQ>/<NNNNNN>``
(:func:`sample_key`, :func:`synthetic_key`, :func:`sub_image_key`) and where a key's image lies
(:func:`image_path`).

:func:`scan_gopro_split` lists and checks the (blurry, sharp, flow) triplets of a split; :func:`create_gopro_lmdb`
writes them into three BasicSR LMDB databases (``<prefix>_blur.lmdb``, ``<prefix>_sharp.lmdb``,
``<prefix>_flow.lmdb``) with BasicSR's :class:`~basicsr.utils.lmdb_util.LmdbMaker`, keys ``<SEQ>/<NNNNNN>`` (plus
``_sXXX`` for sub-images), optionally cropping sub-images first.
"""
import contextlib
import errno
import os
import shutil
import tempfile
from os import path as osp

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from sdnet_plugin.data.flow_io import decode_flow, quantize_flow
from sdnet_plugin.image_io import read_unchanged

__all__ = [
    'GOPRO_FOLDERS', 'LMDB_KINDS', 'FRAMES_PER_SEQUENCE', 'IMAGE_SUFFIX', 'sample_key', 'split_key', 'synthetic_key',
    'sub_image_key', 'image_name', 'image_path', 'scan_gopro_split', 'lmdb_paths', 'read_meta_keys', 'crop_positions',
    'create_gopro_lmdb', 'verify_gopro_lmdb'
]

GOPRO_FOLDERS = ('blur', 'blur_gamma', 'sharp', 'flow')  # the folders of a sequence, in GoPro's layout
LMDB_KINDS = ('blur', 'sharp', 'flow')
FRAMES_PER_SEQUENCE = 20  # synthetic samples per sequence folder
IMAGE_SUFFIX = '.png'
# what writing the databases raises when the disk is full, over quota, read-only or failing
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def sample_key(sequence, stem):
    """Key ``<SEQ>/<NNNNNN>`` of the image ``<stem>.png`` of a sequence (the LMDB key, the sample's name)."""
    return f'{sequence}/{stem}'


def split_key(key):
    """``'<SEQ>/<NNNNNN>'`` -> ``(sequence, stem)``."""
    sequence, stem = key.split('/')
    return sequence, stem


def synthetic_key(split, index):
    """Key of synthetic sample ``index`` of a split: ``SYN_<split>_<SSSS>/<NNNNNN>``, ``FRAMES_PER_SEQUENCE`` samples
    per sequence (no dots, usable as an LMDB key)."""
    return sample_key(f'SYN_{split}_{index // FRAMES_PER_SEQUENCE:04d}', f'{index % FRAMES_PER_SEQUENCE:06d}')


def sub_image_key(key, index):
    """Key of sub-image ``index`` of a sample cropped into sub-images: ``<SEQ>/<NNNNNN>_sXXX``."""
    return f'{key}_s{index:03d}'


def image_name(key):
    """File name of a key's images inside their folder: ``NNNNNN.png``."""
    return split_key(key)[1] + IMAGE_SUFFIX


def image_path(root, key, folder):
    """Path of a key's image in one of the ``GOPRO_FOLDERS`` of the split folder ``root``."""
    sequence, _ = split_key(key)
    return osp.join(root, sequence, folder, image_name(key))


def scan_gopro_split(dataroot, blur_folder='blur', sharp_folder='sharp', flow_folder='flow', use_flow=True):
    """List the triplets of a GoPro-layout split, checking that every blurry image has its partners.

    Args:
        dataroot (str): Split folder holding ``<SEQ>/`` sub-folders.
        blur_folder (str): ``'blur'`` or ``'blur_gamma'``. Default: ``'blur'``.
        sharp_folder (str): Default: ``'sharp'``.
        flow_folder (str): Default: ``'flow'``.
        use_flow (bool): Require and list flows. Default: True.

    Returns:
        list[dict]: ``{'key': 'SEQ/NNNNNN', 'blur': path, 'sharp': path, 'flow': path or None}``, sorted by key.

    Raises:
        FileNotFoundError: Missing split, no blurry image, or a missing sharp image / flow (named).
    """
    if not osp.isdir(dataroot):
        raise FileNotFoundError(f'dataset folder not found: {dataroot}')
    samples = []
    for seq in sorted(os.listdir(dataroot)):
        blur_dir = osp.join(dataroot, seq, blur_folder)
        if not osp.isdir(blur_dir):
            continue
        for name in sorted(os.listdir(blur_dir)):
            stem, ext = osp.splitext(name)
            if ext.lower() != IMAGE_SUFFIX or name.startswith('.'):
                continue
            if '.' in stem or '.' in seq:
                raise ValueError(f'names must not contain dots (they become LMDB keys): {osp.join(blur_dir, name)}')
            sharp = osp.join(dataroot, seq, sharp_folder, name)
            if not osp.isfile(sharp):
                raise FileNotFoundError(f'sharp image missing for {osp.join(blur_dir, name)}: {sharp}')
            flow = None
            if use_flow:
                flow = osp.join(dataroot, seq, flow_folder, name)
                if not osp.isfile(flow):
                    raise FileNotFoundError(f'flow missing for {osp.join(blur_dir, name)}: {flow} '
                                            '(set use_flow: false for data without flows)')
            samples.append({
                'key': sample_key(seq, stem),
                'blur': osp.join(blur_dir, name),
                'sharp': sharp,
                'flow': flow
            })
    if not samples:
        raise FileNotFoundError(f'no blurry images found in {dataroot}/<SEQ>/{blur_folder}/*.png')
    return samples


def lmdb_paths(dst, prefix):
    """``{'blur': .., 'sharp': .., 'flow': ..}`` database paths for a prefix."""
    return {kind: osp.join(dst, f'{prefix}_{kind}.lmdb') for kind in LMDB_KINDS}


def read_meta_keys(lmdb_path):
    """Keys listed in a BasicSR LMDB's ``meta_info.txt``, with their ``(h, w, c)`` shapes."""
    meta = osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isfile(meta):
        raise FileNotFoundError(f'not a BasicSR LMDB (no meta_info.txt): {lmdb_path}')
    entries = []
    with open(meta) as f:
        for line in f:
            if not line.strip():
                continue
            name, shape = line.split(' ')[:2]
            entries.append((name.split('.')[0], tuple(int(v) for v in shape.strip('()').split(','))))
    return entries


def crop_positions(length, crop_size, step, thresh_size=0):
    """Start positions of sub-images along one axis (BasicSR's ``extract_subimages`` rule)."""
    if crop_size is None or crop_size >= length:
        return [0]
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def _read_flow_stored(path):
    """A flow PNG checked by the reader training uses (16-bit, 4 channels), in its stored encoding."""
    with open(path, 'rb') as f:
        return quantize_flow(decode_flow(f.read(), path))


def _check_key(key, path):
    """LMDB keys go into ``meta_info.txt`` (fields separated by spaces) and are ASCII-encoded by BasicSR."""
    if not key.isascii() or any(c.isspace() for c in key):
        raise ValueError(f'names must be ASCII without spaces (they become LMDB keys in meta_info.txt, read by '
                         f'splitting on spaces): {path}')


def _build_names(dst, prefix):
    """Hidden names of the build folders and of the link that says which build is current."""
    return osp.join(dst, f'.{prefix}.lmdb-build-'), osp.join(dst, f'.{prefix}.lmdb-current')


def _remove_stale_builds(dst, prefix):
    """Remove what interrupted runs left (builds not current, half-made links, older temporary databases)."""
    build_prefix, current = _build_names(dst, prefix)
    keep = osp.realpath(current) if osp.islink(current) else None
    stale = {current + '.new'} | {path + '.new' for path in lmdb_paths(dst, prefix).values()}
    stale |= {
        osp.join(dst, f'.{name}')
        for name in [f'partial_{prefix}_{kind}.lmdb'
                     for kind in LMDB_KINDS] + [f'{prefix}.lmdb-legacy-{kind}' for kind in LMDB_KINDS]
    }
    for name in os.listdir(dst):
        path = osp.join(dst, name)
        if not (path in stale or path.startswith(build_prefix)) or osp.realpath(path) == keep:
            continue
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _switch_to_build(dst, prefix, build, kinds):
    """Make ``<prefix>_<kind>.lmdb`` show the databases of ``build``, all at once.

    The names are links into ``.<prefix>.lmdb-current``, itself a link to the current build; the switch is one
    ``os.replace`` of that link, so a kill at any moment leaves either every old database or every new one.
    Databases of the old layout (real folders) are moved aside before any link is made, so they never mix with new
    ones either.
    """
    _, current = _build_names(dst, prefix)
    finals = lmdb_paths(dst, prefix)
    targets = {kind: osp.join(osp.basename(current), f'{kind}.lmdb') for kind in finals}
    for kind, path in finals.items():
        if osp.isdir(path) and not osp.islink(path):
            os.replace(path, osp.join(dst, f'.{prefix}.lmdb-legacy-{kind}'))
    old = osp.realpath(current) if osp.islink(current) else None
    os.symlink(osp.basename(build), current + '.new')
    os.replace(current + '.new', current)
    for kind, path in finals.items():
        if kind in kinds and not (osp.islink(path) and os.readlink(path) == targets[kind]):
            if osp.lexists(path + '.new'):
                os.remove(path + '.new')
            os.symlink(targets[kind], path + '.new')
            os.replace(path + '.new', path)
        elif kind not in kinds and osp.lexists(path):
            os.remove(path)  # a database of an earlier build that this one does not have
    if old and old != osp.realpath(build):
        shutil.rmtree(old, ignore_errors=True)
    _remove_stale_builds(dst, prefix)


def create_gopro_lmdb(src, dst, prefix, blur_folder='blur', use_flow=True, crop_size=None, step=256, thresh_size=0,
                      compress_level=1, overwrite=False, progress=True, verify=False):
    """Write a GoPro-layout split into ``<dst>/<prefix>_{blur,sharp,flow}.lmdb`` (BasicSR LMDB format).

    The databases are built (and verified) in a hidden folder, then switched in all at once (see
    :func:`_switch_to_build`): an interrupted or failed run never leaves databases that look finished, nor a mix of
    old and new ones. Every flow is checked with the reader training uses.

    Args:
        src (str): Split folder (``<src>/<SEQ>/{blur,sharp,flow}/NNNNNN.png``).
        dst (str): Output folder.
        prefix (str): Database name prefix, e.g. ``'train'``.
        blur_folder (str): ``'blur'`` or ``'blur_gamma'``. Default: ``'blur'``.
        use_flow (bool): Also write the flow database. Default: True.
        crop_size (int | None): Crop every image into ``crop_size`` sub-images first. Default: None, whole images.
        step (int): Step between sub-images. Default: 256.
        thresh_size (int): A remaining border larger than this gets one more sub-image flush with the edge.
            Default: 0.
        compress_level (int): PNG compression in the database. Default: 1.
        overwrite (bool): Replace existing databases. Default: False.
        progress (bool): Show a progress bar. Default: True.
        verify (bool): Re-read and decode every entry (:func:`verify_gopro_lmdb`) before the switch. Default: False.

    Returns:
        dict: ``kind -> database path``; ``'keys'``: the list of keys written; ``'verified'``: entries verified
        (with ``verify``).
    """
    from basicsr.utils.lmdb_util import LmdbMaker
    if crop_size is not None and crop_size < 1 or step < 1 or thresh_size < 0 or not 0 <= compress_level <= 9:
        raise ValueError(f'crop size and step must be positive, thresh size >= 0 and compress level 0-9, got '
                         f'{crop_size}, {step}, {thresh_size} and {compress_level}')
    samples = scan_gopro_split(src, blur_folder=blur_folder, use_flow=use_flow)
    for sample in samples:
        _check_key(sample['key'], sample['blur'])
    kinds = LMDB_KINDS if use_flow else LMDB_KINDS[:2]
    finals = {k: v for k, v in lmdb_paths(dst, prefix).items() if k in kinds}
    for path in finals.values():
        if osp.lexists(path) and not overwrite:
            raise FileExistsError(f'{path} exists; pass --overwrite to replace it')
    os.makedirs(dst, exist_ok=True)
    _remove_stale_builds(dst, prefix)
    build = tempfile.mkdtemp(prefix=osp.basename(_build_names(dst, prefix)[0]), dir=dst)
    paths = {k: osp.join(build, f'{k}.lmdb') for k in kinds}
    readers = {'blur': read_unchanged, 'sharp': read_unchanged, 'flow': _read_flow_stored}
    makers, keys, verified = {}, [], None
    try:
        for kind in kinds:
            makers[kind] = LmdbMaker(paths[kind], map_size=1024**4, compress_level=compress_level)
        for sample in tqdm(samples, unit='image', desc=f'lmdb {prefix}', disable=not progress):
            images = {k: readers[k](sample[k]) for k in kinds}
            shapes = {k: img.shape[:2] for k, img in images.items()}
            if len(set(shapes.values())) != 1:
                raise ValueError(f'sizes disagree for {sample["key"]}: ' +
                                 ', '.join(f'{sample[k]} {shapes[k][1]}x{shapes[k][0]}' for k in kinds))
            h, w = shapes['blur']
            tops = crop_positions(h, crop_size, step, thresh_size)
            lefts = crop_positions(w, crop_size, step, thresh_size)
            index = 0
            for top in tops:
                for left in lefts:
                    key = sample['key'] if crop_size is None else sub_image_key(sample['key'], index)
                    index += 1
                    for kind, img in images.items():
                        patch = img if crop_size is None else img[top:top + crop_size, left:left + crop_size]
                        patch = np.ascontiguousarray(patch)
                        ok, buf = cv2.imencode('.png', patch, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
                        if not ok:
                            raise IOError(f'could not encode {sample[kind]}')
                        channels = 1 if patch.ndim == 2 else patch.shape[2]
                        makers[kind].put(buf.tobytes(), key, (patch.shape[0], patch.shape[1], channels))
                    keys.append(key)
        for kind in list(makers):  # the final commit: a full disk shows here
            makers[kind].close()
            del makers[kind]
        if verify:
            verified = _verify_databases(paths, progress)
    except BaseException as error:
        for maker in makers.values():
            with contextlib.suppress(lmdb.Error, OSError):  # closing on a full disk fails too
                maker.env.close()
            with contextlib.suppress(OSError):
                maker.txt_file.close()
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(error, lmdb.Error) or isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            reason = (error.strerror if isinstance(error, OSError) else str(error).strip()) or type(error).__name__
            raise IOError(f'cannot write the databases in {dst}: {reason}') from None
        raise
    _switch_to_build(dst, prefix, build, kinds)
    return dict(finals, keys=keys, **({'verified': verified} if verify else {}))


def verify_gopro_lmdb(dst, prefix, use_flow=True, progress=True):
    """Re-read and decode every key of the databases; check that they hold the same keys and shapes.

    Returns:
        int: Number of keys checked.

    Raises:
        ValueError: Mismatching keys or shapes, undecodable entries (named).
    """
    kinds = LMDB_KINDS if use_flow else LMDB_KINDS[:2]
    return _verify_databases({k: v for k, v in lmdb_paths(dst, prefix).items() if k in kinds}, progress)


def _verify_databases(paths, progress=True):
    """:func:`verify_gopro_lmdb` of the databases ``{'blur': path, 'sharp': path[, 'flow': path]}``."""
    kinds = list(paths)
    entries = {k: read_meta_keys(p) for k, p in paths.items()}
    reference = [key for key, _ in entries['blur']]
    for kind in kinds:
        keys = [key for key, _ in entries[kind]]
        if keys != reference:
            missing = sorted(set(reference) ^ set(keys))
            raise ValueError(f'{paths[kind]} and {paths["blur"]} hold different keys (e.g. {missing[:3]})')
    count = 0
    for kind in kinds:
        if not osp.isfile(osp.join(paths[kind], 'data.mdb')):
            raise FileNotFoundError(f'{paths[kind]} has no data.mdb: not an LMDB database (incomplete copy?)')
        env = lmdb.open(paths[kind], readonly=True, lock=False, readahead=False)
        try:
            with env.begin(write=False) as txn:
                for key, shape in tqdm(entries[kind], desc=f'verify {kind}', unit='key', disable=not progress):
                    content = txn.get(key.encode('ascii'))
                    name = f'{paths[kind]}:{key}'
                    if content is None:
                        raise ValueError(f'{name}: listed in meta_info.txt but missing')
                    if kind == 'flow':
                        img = decode_flow(content, name)
                    else:
                        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
                        if img is None:
                            raise ValueError(f'{name}: undecodable image')
                    got = (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])
                    if got != shape:
                        raise ValueError(f'{name}: shape {got} differs from meta_info.txt {shape}')
                    count += 1
        finally:
            env.close()
    return count


def gopro_pairs(dataroot, blur_folder='blur', sharp_folder='sharp', extensions=('.png', )):
    """List the blurry images of a GoPro-layout split with their sharp partners' paths, without the checks of
    :func:`scan_gopro_split` (for held-out sets: names need not be LMDB keys, any image format).

    Args:
        dataroot (str): Split folder holding ``<SEQ>/`` sub-folders (a missing folder has no pairs).
        blur_folder (str): Default: ``'blur'``.
        sharp_folder (str): Default: ``'sharp'``.
        extensions (tuple[str]): Lower-case extensions of the images listed. Default: ``('.png', )``.

    Returns:
        list[tuple[str, str, str]]: ``('SEQ/<stem>', blurry path, sharp path)`` sorted by blurry path, hidden files
        and folders left out; the sharp image may not exist.
    """
    pairs = []
    for seq in os.listdir(dataroot) if osp.isdir(dataroot) else ():
        blur_dir = osp.join(dataroot, seq, blur_folder)
        names = os.listdir(blur_dir) if not seq.startswith('.') and osp.isdir(blur_dir) else ()
        pairs += [(f'{seq}/{osp.splitext(name)[0]}', osp.join(blur_dir,
                                                              name), osp.join(dataroot, seq, sharp_folder, name))
                  for name in names if not name.startswith('.') and name.lower().endswith(extensions)]
    return sorted(pairs, key=lambda pair: pair[1])
