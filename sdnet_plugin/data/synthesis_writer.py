"""Synthetic GoPro-layout datasets: photographs in, ``<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png`` out.

:func:`synthesize_dataset` draws one scene per sample (:mod:`sdnet_plugin.data.scene_motion`) from a generator
seeded by ``(seed, split, index)``, renders it (:mod:`sdnet_plugin.data.scene_rendering`) and writes the sample in
one or several processes; every sample depends only on its seed, split, index, the photos and the options, never on
the number of processes. A run is described by a :class:`SynthesisJob`; a :class:`SampleWriter` (one per process)
holds the decoded photographs and writes samples by index.
"""
import dataclasses
import json
import multiprocessing
import os
import zlib
from os import path as osp

import cv2
import numpy as np
from tqdm import tqdm

from sdnet_plugin.data.flow_io import FLOW_MAX, FLOW_MIN, encode_flow
from sdnet_plugin.data.flow_utils import blur_extent
from sdnet_plugin.data.gopro_layout import GOPRO_FOLDERS, image_name, image_path, split_key, synthetic_key
from sdnet_plugin.data.scene_motion import sample_scene
from sdnet_plugin.data.scene_rendering import fit_scene, render_scene, to_uint8_bgr
from sdnet_plugin.file_safety import atomic_directory, is_temporary, remove_temporaries
from sdnet_plugin.image_io import IMAGE_EXTENSIONS, read_image

__all__ = [
    'DEFAULT_PHOTO_FILES', 'VAL_FRACTION', 'HIST_BIN_PX', 'HIST_BINS', 'MAX_BLUR_LIMIT', 'default_photo_paths',
    'find_photos', 'split_photos', 'load_photo', 'SynthesisJob', 'SampleWriter', 'check_replaceable',
    'synthesize_dataset'
]

# real photographs shipped inside scikit-image (CC0 / public domain), used when no photo folder is given
DEFAULT_PHOTO_FILES = ('astronaut.png', 'brick.png', 'camera.png', 'chelsea.png', 'coffee.png', 'coins.png',
                       'grass.png', 'gravel.png', 'moon.png', 'motorcycle_left.png', 'motorcycle_right.png',
                       'rocket.jpg')
VAL_FRACTION = 0.2
HIST_BIN_PX = 1.0
HIST_BINS = 128
# Largest max_blur whose flows fit the flow files' range: over 18000 random scenes (every cap reached) the largest
# flow was 1.62x max_blur (translation with acceleration, plus rotation and zoom, plus a layer's own motion).
MAX_BLUR_LIMIT = 256.0


def default_photo_paths():
    """Paths of the photographs shipped with scikit-image that load offline."""
    import skimage.data
    folder = osp.dirname(skimage.data.__file__)
    paths = [osp.join(folder, name) for name in DEFAULT_PHOTO_FILES if osp.isfile(osp.join(folder, name))]
    if not paths:
        raise FileNotFoundError(f'no default photographs found in {folder}; pass a photo folder')
    return paths


def find_photos(folder):
    """Every image file under ``folder`` (recursive), sorted."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'photo folder not found: {folder}')
    paths = sorted(
        osp.join(root, name) for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS) and not is_temporary(name))
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {folder}')
    return paths


def split_photos(paths, split, root=None):
    """Deterministic, disjoint train/val partition of whole photographs.

    A photo goes to ``val`` by a hash of its name (relative to ``root``), so the partition does not depend on the
    order or number of other photos; about ``VAL_FRACTION`` of the photos (at least one, never all) are held out.

    Args:
        paths (list[str]): Photo paths.
        split (str): ``'train'``, ``'val'`` or ``'all'``.
        root (str | None): Folder the names are taken relative to. Default: None, the file name.
    """
    if split == 'all':
        return list(paths)
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if len(paths) < 2:
        raise ValueError(f'a {split} split needs at least 2 photos, got {len(paths)}')

    def name_hash(path):
        name = osp.relpath(path, root) if root else osp.basename(path)
        return zlib.crc32(name.replace(os.sep, '/').encode('utf-8'))

    ranked = sorted(paths, key=lambda p: (name_hash(p), p))
    num_val = min(len(paths) - 1, max(1, int(round(len(paths) * VAL_FRACTION))))
    chosen = set(ranked[:num_val]) if split == 'val' else set(ranked[num_val:])
    return [p for p in paths if p in chosen]


def load_photo(path):
    """Photo -> float32 RGB ``(H, W, 3)`` in ``[0, 1]``, upright (grey images become RGB, alpha is dropped, 16-bit
    photos keep their precision); see :func:`sdnet_plugin.image_io.read_image`."""
    rgb = read_image(path).rgb
    if min(rgb.shape[:2]) < 16:
        raise ValueError(f'photo too small (need at least 16x16): {path}')
    return rgb


@dataclasses.dataclass(frozen=True)
class SynthesisJob:
    """What every sample of a synthesis run shares: where it goes, the photographs and the scene options.

    Args:
        out_dir (str): Split folder the samples are written to.
        photo_paths (tuple[str]): Photographs the scenes are composed of.
        seed (int): Random seed.
        split (str): ``'train'``, ``'val'`` or ``'all'`` (part of every sample's seed and key).
        width (int): Sample width.
        height (int): Sample height.
        blur_scale (float): Multiplies every motion.
        max_blur (float): Cap of each surface's first-to-last translation, pixels.
        realism (str): ``'gopro'`` or ``'camera'``.
        without (tuple[str]): Camera features switched off.
        max_upscale (float | None): Largest scale factor of a photo (:func:`fit_scene`); None: no limit.
            Default: None.
        min_side (int): Smallest side a sample is cut to so that its background photo fits. Default: 256.
    """
    out_dir: str
    photo_paths: tuple
    seed: int
    split: str
    width: int
    height: int
    blur_scale: float
    max_blur: float
    realism: str
    without: tuple
    max_upscale: float = None
    min_side: int = 256

    def rng(self, index):
        """The random generator of sample ``index``: seeded by the seed, the split and the index only."""
        return np.random.default_rng([int(self.seed), zlib.crc32(self.split.encode()), int(index)])

    def scene(self, index, num_photos):
        """The scene description of sample ``index`` (:func:`~sdnet_plugin.data.scene_motion.sample_scene`)."""
        camera = {'realism': self.realism, 'without': self.without}
        return sample_scene(
            self.rng(index), num_photos, self.width, self.height, self.blur_scale, self.max_blur, **camera)

    def key(self, index):
        """GoPro-layout key ``<SEQ>/<NNNNNN>`` of sample ``index``."""
        return synthetic_key(self.split, index)


class SampleWriter:
    """Renders and writes the samples of a :class:`SynthesisJob` by index; holds the job's decoded photographs.

    Args:
        job (SynthesisJob): The run.
    """

    def __init__(self, job):
        self.job = job
        self.photos = [load_photo(p) for p in job.photo_paths]  # validates every photo before any work starts
        self.photo_sizes = [(p.shape[1], p.shape[0]) for p in self.photos]

    def __call__(self, index):
        """Render sample ``index`` and write its four images.

        Returns:
            tuple[dict, ndarray]: The sample's record for ``synthesis.json`` and its blur-extent histogram
            (``HIST_BINS`` counts of ``HIST_BIN_PX`` bins).
        """
        job = self.job
        scene = job.scene(index, len(self.photos))
        scene = fit_scene(scene, self.photo_sizes[scene['background']['photo']], job.max_upscale, job.min_side)
        sample = render_scene(scene, self.photos, max_upscale=job.max_upscale)
        flow = np.clip(sample['flow'], FLOW_MIN, FLOW_MAX)  # max_blur keeps flows far inside; never wrap around
        key = job.key(index)
        for folder in GOPRO_FOLDERS:
            os.makedirs(osp.dirname(image_path(job.out_dir, key, folder)), exist_ok=True)
        for folder in ('blur', 'blur_gamma', 'sharp'):
            _write_bytes(image_path(job.out_dir, key, folder), _encode_png(to_uint8_bgr(sample[folder])))
        _write_bytes(image_path(job.out_dir, key, 'flow'), encode_flow(flow))
        extent = blur_extent(flow)
        hist, _ = np.histogram(
            np.minimum(extent, HIST_BINS * HIST_BIN_PX - 1e-3), HIST_BINS, (0, HIST_BINS * HIST_BIN_PX))
        record = {
            'key': key,
            'size': scene['size'],
            'scale': round(sample['scales'][0], 4),
            'layer_scales': [round(v, 4) for v in sample['scales'][1:]],
            'num_subframes': sample['num_subframes'],
            'num_layers': len(scene['layers']),
            'blur_extent_mean': round(float(extent.mean()), 3),
            'blur_extent_max': round(float(extent.max()), 3),
        }
        if 'camera' in scene:
            camera = scene['camera']
            record.update(
                exposure=round(camera['exposure'], 3), handshake='path' in scene['background']['motion'],
                highlight_gain=round(camera['highlight_gain'], 3), lights=len(camera['lights']),
                shot_noise=camera['noise'] and round(camera['noise']['shot'], 6), jpeg_quality=camera['jpeg_quality'])
        return record, hist


def _encode_png(array, compress_level=1):
    ok, buf = cv2.imencode('.png', array, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise IOError('could not encode a PNG image')
    return buf.tobytes()


def _write_bytes(path, data):
    """Write a file of the build folder (the whole folder appears at once, see :func:`synthesize_dataset`)."""
    with open(path, 'wb') as f:
        f.write(data)


# The writer of a worker process: made once per process by the pool's initializer (it holds the decoded photos).
_worker_writer = None


def _start_worker(job):
    global _worker_writer
    _worker_writer = SampleWriter(job)


def _write_in_worker(index):
    return _worker_writer(index)


def _write_samples(job, count, workers=1, progress=True):
    """Write samples ``0 .. count - 1`` of a job, in ``workers`` processes.

    Returns:
        dict: ``synthesis.json`` without the photo list: options, mean blur extent, histogram, sample records.
    """
    writer = SampleWriter(job)  # validates every photo before any work starts
    records, histogram = [], np.zeros(HIST_BINS, np.int64)
    bar = tqdm(total=count, unit='sample', desc='synthesize', disable=not progress)
    if workers > 1:
        context = multiprocessing.get_context('fork' if 'fork' in multiprocessing.get_all_start_methods() else None)
        # One OpenCV thread per worker (the processes already fill the cores). It is set in the parent before the
        # fork: changing OpenCV's thread pool inside a forked child deadlocks on the parent's copied pool state.
        opencv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with context.Pool(workers, initializer=_start_worker, initargs=(job, )) as pool:
                for record, hist in pool.imap(_write_in_worker, range(count), chunksize=max(1, count // (8 * workers))):
                    records.append(record)
                    histogram += hist
                    bar.update(1)
        finally:
            cv2.setNumThreads(opencv_threads)
    else:
        for index in range(count):
            record, hist = writer(index)
            records.append(record)
            histogram += hist
            bar.update(1)
    bar.close()
    extents = np.array([r['blur_extent_mean'] for r in records])
    layer_scales = np.array([v for r in records for v in r['layer_scales']])
    return {
        'options': {
            'count': count,
            'size': [job.width, job.height],
            'seed': job.seed,
            'split': job.split,
            'blur_scale': job.blur_scale,
            'max_blur': job.max_blur,
            'realism': job.realism,
            'without': list(job.without),
            'max_upscale': job.max_upscale,
            'min_side': job.min_side
        },
        'blur_extent_mean_px': round(float(extents.mean()), 3),
        'below_size_share': round(float(np.mean([r['size'] != [job.width, job.height] for r in records])), 4),
        'upsampled_share': round(float(np.mean([r['scale'] > 1 for r in records])), 4),
        'layer_upsampled_share': round(float(np.mean(layer_scales > 1)) if len(layer_scales) else 0.0, 4),
        'scale_max': max(r['scale'] for r in records),
        'histogram': {
            'bin_px': HIST_BIN_PX,
            'counts': histogram.tolist()
        },
        'samples': records,
    }


def check_replaceable(out_dir, photo_dir=None):
    """Refuse to replace ``out_dir`` unless it is a previous synthesis output and holds no input photographs.

    A previous output holds ``synthesis.json`` and only the sequence folders it lists, whose ``GOPRO_FOLDERS``
    hold only the images of its samples.

    Raises:
        FileExistsError: ``out_dir`` is something else (named, with the reason).
    """
    real = osp.realpath(out_dir)
    if photo_dir and (osp.realpath(photo_dir) + os.sep).startswith(real + os.sep):
        raise FileExistsError(f'refusing to replace {out_dir}: it contains the photo folder {photo_dir}')
    if osp.islink(out_dir) or not osp.isdir(out_dir):
        raise FileExistsError(f'refusing to replace {out_dir}: not a folder written by the synthesizer')
    images = {}  # sequence -> the image names its folders may hold
    try:
        with open(osp.join(out_dir, 'synthesis.json')) as f:
            for record in json.load(f)['samples']:
                images.setdefault(split_key(record['key'])[0], set()).add(image_name(record['key']))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise FileExistsError(f'refusing to replace {out_dir}: no readable synthesis.json, so it is not a previous '
                              'synthesis output; choose another --out or remove it yourself') from None

    def plain_folder(path):
        return osp.isdir(path) and not osp.islink(path)

    def written(name):
        path = osp.join(out_dir, name)
        if name not in images:
            return name == 'synthesis.json'
        return plain_folder(path) and set(os.listdir(path)) <= set(GOPRO_FOLDERS) and all(
            plain_folder(osp.join(path, folder)) and set(os.listdir(osp.join(path, folder))) <= images[name]
            for folder in os.listdir(path))

    others = sorted(name for name in os.listdir(out_dir) if not written(name))
    if others:
        raise FileExistsError(f'refusing to replace {out_dir}: it holds files the synthesizer did not write '
                              f'({", ".join(others[:3])}{", ..." if len(others) > 3 else ""})')


def synthesize_dataset(out_dir, count, photo_dir=None, size=(256, 256), seed=0, workers=1, split='all', overwrite=False,
                       blur_scale=1.0, max_blur=60.0, progress=True, realism='gopro', without=(), max_upscale=1.0,
                       min_side=256):
    """Write ``count`` synthetic samples in GoPro layout ``out_dir/<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png``.

    The tree is written in a hidden temporary folder next to ``out_dir`` and renamed at the end
    (:func:`sdnet_plugin.file_safety.atomic_directory`), so an interrupted run never leaves a tree that looks
    complete. ``out_dir/synthesis.json`` records the options, every sample's sub-frame count, layer
    count and blur extent, and the blur-extent histogram (1 px bins of the per-pixel trajectory length).

    Args:
        out_dir (str): Output folder (must not exist unless ``overwrite``).
        count (int): Number of samples.
        photo_dir (str | None): Folder of photographs (recursive). Default: None, scikit-image's bundled photos.
        size (tuple[int, int]): ``(width, height)``. Default: (256, 256).
        seed (int): Random seed; the output depends only on the seed, split, photos and options. Default: 0.
        workers (int): Worker processes. Default: 1.
        split (str): ``'train'``, ``'val'`` (disjoint sets of whole photos) or ``'all'``. Default: ``'all'``.
        overwrite (bool): Replace an existing ``out_dir`` that is a previous synthesis output (see
            :func:`check_replaceable`). Default: False.
        blur_scale (float): Multiplies every motion. Default: 1.0.
        max_blur (float): Cap of each surface's first-to-last translation, pixels. Default: 60.
        progress (bool): Show a progress bar. Default: True.
        realism (str): ``'gopro'`` or ``'camera'`` (handheld-camera realism, :func:`sample_camera`).
            Default: ``'gopro'``.
        without (tuple[str]): Camera features switched off (``CAMERA_FEATURES``). Default: ().
        max_upscale (float | None): Largest scale factor (output pixels per photo pixel) of a photo: a sample whose
            background photo is too small for its size plus the motion margins is rendered at the largest size that
            fits (:func:`fit_scene`, each side at least ``min_side``), a layer covers only its shape. None: no limit
            (photos upsampled as needed, as before the limit existed). Default: 1.0, never upsampled.
        min_side (int): Smallest side a sample is cut to (at most the requested side). Default: 256.

    Returns:
        dict: The content of ``synthesis.json``.
    """
    width, height = (int(v) for v in size)
    without = tuple(sorted(set(without)))
    sample_scene(np.random.default_rng(0), 1, width, height, realism=realism, without=without)  # checks both
    if count < 1:
        raise ValueError(f'count must be positive, got {count}')
    if width < 16 or height < 16:
        raise ValueError(f'size must be at least 16x16, got {width}x{height}')
    if not (np.isfinite(blur_scale) and blur_scale >= 0):
        raise ValueError(f'blur scale must be a finite number >= 0, got {blur_scale}')
    if max_upscale is not None and not max_upscale >= 1:
        raise ValueError(f'max upscale must be a number >= 1, got {max_upscale}')
    if min_side < 16:
        raise ValueError(f'min side must be at least 16, got {min_side}')
    max_upscale = None if max_upscale is None or np.isinf(max_upscale) else float(max_upscale)
    if not (np.isfinite(max_blur) and 0 < max_blur <= MAX_BLUR_LIMIT):
        raise ValueError(f'max blur must be in (0, {MAX_BLUR_LIMIT:g}] px, got {max_blur}: flows reach up to about '
                         f'1.6x the max blur and are stored within [{FLOW_MIN:g}, {FLOW_MAX:g}] px')
    out_dir = osp.abspath(out_dir)
    if osp.exists(out_dir) and not overwrite:
        raise FileExistsError(f'{out_dir} exists; pass --overwrite (overwrite=True) to replace it')
    if osp.lexists(out_dir):
        check_replaceable(out_dir, photo_dir)
    all_paths = find_photos(photo_dir) if photo_dir else default_photo_paths()
    photo_paths = split_photos(all_paths, split, root=photo_dir)
    remove_temporaries(osp.dirname(out_dir), osp.basename(out_dir))  # what killed runs left
    with atomic_directory(out_dir, overwrite) as build_dir:
        job = SynthesisJob(build_dir, tuple(photo_paths), seed, split, width, height, blur_scale, max_blur, realism,
                           without, max_upscale, int(min_side))
        meta = _write_samples(job, count, workers, progress)
        meta['options']['photos'] = [osp.relpath(p, photo_dir) if photo_dir else osp.basename(p) for p in photo_paths]
        with open(osp.join(build_dir, 'synthesis.json'), 'w') as f:
            json.dump(meta, f, indent=1)
        if osp.lexists(out_dir):
            check_replaceable(out_dir, photo_dir)  # again: the folder may have changed during the run
    return meta
