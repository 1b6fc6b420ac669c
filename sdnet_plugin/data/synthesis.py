"""GoPro-style dynamic-scene blur synthesis with exact bi-directional flows.

A scene is a background photograph seen by a moving camera (smooth path: translation, in-plane rotation and zoom
with velocity and acceleration, sometimes shake) plus foreground layers cut from other photographs (soft-edged
ellipses or polygons) that move on their own and occlude what lies behind them. ``N`` sub-frames (7 to 13, like
GoPro's 240 fps windows) are rendered; the middle one is the sharp image, ``blur_gamma`` averages them after
inverting a 2.2 gamma and ``blur`` averages them linearly. Every surface moves by a known similarity transform, so
the flows middle -> first and middle -> last are exact.

Used by ``datasets_prep/synthesize_gopro.py``; :func:`render_scene` and :func:`synthesize_dataset` are the Python API.
"""
import json
import multiprocessing
import os
import shutil
import zlib
from os import path as osp

import cv2
import numpy as np
from tqdm import tqdm

from sdnet_plugin.data.flow_io import FLOW_MAX, FLOW_MIN, encode_flow
from sdnet_plugin.data.flow_utils import blur_extent

GAMMA = 2.2
SUBFRAME_CHOICES = (7, 9, 11, 13)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')
# real photographs shipped inside scikit-image (CC0 / public domain), used when no photo folder is given
DEFAULT_PHOTO_FILES = ('astronaut.png', 'brick.png', 'camera.png', 'chelsea.png', 'coffee.png', 'coins.png',
                       'grass.png', 'gravel.png', 'moon.png', 'motorcycle_left.png',
                       'motorcycle_right.png', 'rocket.jpg')
# Camera realism (``realism='camera'``): what a handheld photograph adds to GoPro-style averaging. Each feature can be
# switched off on its own (``without``); see :func:`sample_camera`.
REALISM_CHOICES = ('gopro', 'camera')
CAMERA_FEATURES = ('dense', 'exposure', 'handshake', 'highlights', 'lights', 'noise', 'jpeg')
MAX_SUBFRAMES = 97  # dense rendering: at most this many sub-frames (steps of at most DENSE_STEP_PX)
DENSE_STEP_PX = 1.0
HIST_BIN_PX = 1.0
HIST_BINS = 128
FRAMES_PER_SEQUENCE = 20
VAL_FRACTION = 0.2
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
        if name.lower().endswith(IMAGE_EXTENSIONS))
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
    """Photo -> float32 RGB ``(H, W, 3)`` in ``[0, 1]`` (grey and alpha images are converted)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise IOError(f'unreadable image: {path}')
    if img.dtype == np.uint16:
        img = (img / 257.0).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if min(img.shape[:2]) < 16:
        raise ValueError(f'photo too small (need at least 16x16): {path}')
    return img.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# Motion model: every surface moves by a similarity transform of image coordinates, G(tau), tau in [-1, 1] over the
# exposure, G(0) = identity. Matrices are 3x3 acting on (x, y, 1).


def _similarity(scale, angle, centre, shift):
    """``p -> scale * R(angle) (p - centre) + centre + shift`` as a 3x3 matrix."""
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    cx, cy = centre
    return np.array([[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]], [0, 0, 1]])


def motion_matrix(motion, tau):
    """Forward motion ``G(tau)`` (3x3) of a surface described by a motion dict (see :func:`sample_motion`)."""
    tau = float(tau)
    velocity, accel = np.asarray(motion['velocity']), np.asarray(motion['acceleration'])
    shift = velocity * tau + 0.5 * accel * tau**2
    for amp_x, amp_y, freq, phase in motion.get('shake', []):
        wave = np.sin(2 * np.pi * freq * tau + phase) - np.sin(phase)
        shift = shift + np.array([amp_x, amp_y]) * wave
    angle = motion['angular_velocity'] * tau + 0.5 * motion['angular_acceleration'] * tau**2
    if motion.get('path'):  # hand shake: a spline through random-walk knots (x, y, angle), 0 at tau = 0
        offset = _spline(motion['path'], tau) - _spline(motion['path'], 0.0)
        shift, angle = shift + offset[:2], angle + offset[2]
    scale = np.exp(motion['zoom_rate'] * tau)
    return _similarity(scale, angle, motion['centre'], shift)


def _spline(path, tau):
    """Catmull-Rom spline through ``path['points']`` (K x D) at knots ``path['t0'] + k * path['dt']``, at ``tau``."""
    points = np.asarray(path['points'], np.float64)
    pos = np.clip((np.asarray(tau, np.float64) - path['t0']) / path['dt'], 0, len(points) - 1)
    i = np.minimum(np.floor(pos).astype(int), len(points) - 2)
    u = (pos - i)[..., None]
    p0, p1 = points[np.maximum(i - 1, 0)], points[i]
    p2, p3 = points[i + 1], points[np.minimum(i + 2, len(points) - 1)]
    return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3)


def sample_handshake(rng, extent, radius, arc=1.5, knots=13, span=2.0):
    """Hand-shake camera path: curved and jittery, as the hand holding a camera moves during the exposure.

    The velocity (translation and in-plane rotation) follows a random walk with momentum over ``knots`` points
    spread on ``[-span, span]`` (so exposures up to ``span`` times the nominal one see more of it); the path is the
    Catmull-Rom spline through its running sum, scaled so that its length over ``[-1, 1]`` is ``extent`` pixels and
    its rotation moves the image corners by about ``arc`` pixels.

    Args:
        rng (np.random.Generator): Random source.
        extent (float): Path length over the nominal exposure, pixels.
        radius (float): Distance of the image corners from the centre of rotation, pixels.
        arc (float): Median corner motion of the rotation part, pixels. Default: 1.5.
        knots (int): Knots of the spline. Default: 13.
        span (float): The knots cover ``[-span, span]``. Default: 2.0.

    Returns:
        dict: ``points`` (knots x 3: x, y, angle), ``t0``, ``dt``: the ``path`` of a motion dict.
    """
    velocity, steps = np.zeros(3), []
    momentum = rng.uniform(0.3, 0.8)
    heading = rng.standard_normal(3)
    for _ in range(knots - 1):
        velocity = momentum * velocity + (1 - momentum) * heading + rng.standard_normal(3) * rng.uniform(0.3, 1.0)
        steps.append(velocity.copy())
    points = np.concatenate([np.zeros((1, 3)), np.cumsum(steps, 0)])
    path = {'points': points, 't0': -span, 'dt': 2 * span / (knots - 1)}
    track = _spline(path, np.linspace(-1, 1, 33))
    length = np.hypot(*np.diff(track[:, :2], axis=0).T).sum()
    turn = np.abs(np.diff(track[:, 2])).sum()
    points[:, :2] *= extent / max(length, 1e-6)
    points[:, 2] *= _lognormal_extent(rng, arc, 0.7, 4 * arc) / radius / max(turn, 1e-6)
    return {'points': points.round(6).tolist(), 't0': -span, 'dt': 2 * span / (knots - 1)}


def _lognormal_extent(rng, median, sigma, limit):
    return float(min(limit, median * np.exp(sigma * rng.standard_normal())))


def sample_motion(rng, width, height, centre, translation_median, max_extent, rotation_prob=0.5, zoom_prob=0.3,
                  shake_prob=0.25):
    """Random smooth motion over the exposure, in pixels of an image of the given size.

    Args:
        rng (np.random.Generator): Random source.
        width (int): Image width.
        height (int): Image height.
        centre (tuple[float, float]): Centre of rotation and zoom.
        translation_median (float): Median first-to-last translation, pixels (log-normal, sigma 0.6).
        max_extent (float): Cap of the first-to-last translation, pixels.
        rotation_prob (float): Probability of an in-plane rotation. Default: 0.5.
        zoom_prob (float): Probability of a zoom. Default: 0.3.
        shake_prob (float): Probability of high-frequency shake (curved trajectories). Default: 0.25.
    """
    extent = _lognormal_extent(rng, translation_median, 0.6, max_extent)
    direction = rng.uniform(0, 2 * np.pi)
    velocity = 0.5 * extent * np.array([np.cos(direction), np.sin(direction)])
    # acceleration changes the speed by up to +-60% across the exposure, in any direction
    accel_angle = rng.uniform(0, 2 * np.pi)
    accel = rng.uniform(0, 0.6) * 0.5 * extent * np.array([np.cos(accel_angle), np.sin(accel_angle)])
    radius = 0.5 * np.hypot(width, height)
    angular_velocity = angular_accel = zoom_rate = 0.0
    if rng.random() < rotation_prob:
        # rotation-induced motion at the image corners: median 4 px first-to-last
        arc = _lognormal_extent(rng, 4.0, 0.7, max_extent / 2)
        angular_velocity = rng.choice([-1, 1]) * 0.5 * arc / radius
        angular_accel = rng.uniform(-0.5, 0.5) * angular_velocity
    if rng.random() < zoom_prob:
        radial = _lognormal_extent(rng, 4.0, 0.7, max_extent / 2)
        zoom_rate = rng.choice([-1, 1]) * 0.5 * radial / radius
    shake = []
    if rng.random() < shake_prob:
        for _ in range(rng.integers(1, 3)):
            amp = rng.uniform(0.5, 3.0)
            angle = rng.uniform(0, 2 * np.pi)
            shake.append([amp * np.cos(angle), amp * np.sin(angle), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)])
    return {
        'velocity': velocity.tolist(),
        'acceleration': accel.tolist(),
        'angular_velocity': float(angular_velocity),
        'angular_acceleration': float(angular_accel),
        'zoom_rate': float(zoom_rate),
        'centre': [float(centre[0]), float(centre[1])],
        'shake': shake,
    }


def _max_displacement(matrices, width, height):
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64).T
    return max(float(np.abs(m @ corners - corners).max()) for m in matrices)


def _random_shape(rng, width, height):
    """Soft-edged ellipse or star-shaped polygon placed inside the frame."""
    radius = rng.uniform(0.12, 0.3) * min(width, height)
    centre = [rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height]
    if rng.random() < 0.5:
        return {
            'kind': 'ellipse',
            'centre': centre,
            'axes': [radius, radius * rng.uniform(0.45, 1.0)],
            'angle': rng.uniform(0, 180),
            'feather': rng.uniform(0.6, 1.5)
        }
    num = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, num))
    radii = radius * rng.uniform(0.55, 1.0, num)
    stretch = rng.uniform(0.6, 1.0)
    points = [[centre[0] + r * np.cos(a), centre[1] + stretch * r * np.sin(a)] for a, r in zip(angles, radii)]
    return {'kind': 'polygon', 'points': points, 'feather': rng.uniform(0.6, 1.5), 'centre': centre}


def sample_scene(rng, num_photos, width, height, blur_scale=1.0, max_blur=60.0, background=None, realism='gopro',
                 without=()):
    """Random scene description (JSON-serialisable): photos, placement and motions of the background and layers.

    Args:
        rng (np.random.Generator): Random source.
        num_photos (int): Number of photos to pick from.
        width (int): Output width.
        height (int): Output height.
        blur_scale (float): Multiplies every motion (1.0: median camera blur about 10 px first-to-last).
            Default: 1.0.
        max_blur (float): Cap of each surface's first-to-last translation, pixels. Default: 60.
        background (int | None): Background photo index. Default: None, random.
        realism (str): ``'gopro'`` (sub-frames averaged as GoPro's 240 fps frames) or ``'camera'`` (a handheld
            camera: see :func:`sample_camera`). Default: ``'gopro'``.
        without (tuple[str]): Camera features to switch off (names in ``CAMERA_FEATURES``). Default: ().
    """
    if realism not in REALISM_CHOICES:
        raise ValueError(f'realism must be one of {", ".join(REALISM_CHOICES)}, got {realism!r}')
    unknown = set(without) - set(CAMERA_FEATURES)
    if unknown:
        raise ValueError(f'unknown camera features {", ".join(sorted(unknown))}; choose from '
                         f'{", ".join(CAMERA_FEATURES)}')
    num_subframes = int(rng.choice(SUBFRAME_CHOICES))
    bg_index = int(rng.integers(num_photos)) if background is None else int(background)
    static_camera = rng.random() < 0.1
    camera = sample_motion(
        rng, width, height, [rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height],
        (0.5 if static_camera else 10.0) * blur_scale, max_blur)
    if static_camera:
        camera.update(angular_velocity=0.0, angular_acceleration=0.0, zoom_rate=0.0, shake=[])
    num_layers = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.4, 0.3, 0.15]))
    layers = []
    others = [i for i in range(num_photos) if i != bg_index] or [bg_index]
    for _ in range(num_layers):
        shape = _random_shape(rng, width, height)
        own = sample_motion(rng, width, height, shape['centre'], 14.0 * blur_scale, max_blur, rotation_prob=0.4,
                            zoom_prob=0.2, shake_prob=0.1)
        layers.append({
            'photo': int(rng.choice(others)),
            'shape': shape,
            'motion': own,
            'zoom_out': float(rng.uniform(0.5, 1.0)),
            'texture_offset': [float(rng.random()), float(rng.random())],
            'gain': float(rng.uniform(0.8, 1.2)),
            'hflip': bool(rng.random() < 0.5),
        })
    scene = {
        'size': [int(width), int(height)],
        'num_subframes': num_subframes,
        'background': {
            'photo': bg_index,
            'motion': camera,
            'zoom_out': float(rng.uniform(0.6, 1.0)),
            'offset': [float(rng.random()), float(rng.random())],
            'hflip': bool(rng.random() < 0.5),
        },
        'layers': layers,
    }
    if realism == 'camera':  # drawn after everything above, so 'gopro' scenes stay as they were
        scene['camera'] = sample_camera(rng, scene, blur_scale, max_blur, static_camera, without)
    return scene


def sample_camera(rng, scene, blur_scale=1.0, max_blur=60.0, static_camera=False, without=()):
    """What a handheld camera adds to a scene (``scene['camera']``); may replace the background's motion.

    * ``dense``: enough sub-frames that nothing moves more than ``DENSE_STEP_PX`` between two (continuous streaks
      instead of the separate copies of a few 240 fps frames), at most ``MAX_SUBFRAMES``.
    * ``exposure``: exposure length, log-uniform in [0.4, 2] times the nominal one (the whole scene's motion is
      followed for that long; 1 without), capped so that no surface moves more than ``max_blur``.
    * ``handshake``: 70 % of the moving cameras follow a curved, jittery hand-shake path (:func:`sample_handshake`,
      length log-normal with median 10 px) instead of a smooth one.
    * ``highlights``: 60 % of the scenes brighten the photos' near-white pixels by a gain log-uniform in [1.5, 8]
      (clipped lights and sky were brighter than white).
    * ``lights``: 35 % add 1-6 small light sources 2-40 times brighter than white.
    * ``noise``: signal-dependent sensor noise after averaging (variance ``shot * x + read`` in linear light, ``shot``
      log-uniform in [2e-4, 5e-3], ``read`` tied to it as in real sensors; 10 % of the scenes are noise-free).
    * ``jpeg``: 80 % are JPEG-compressed at quality 70-95 (4:2:0), as cameras and phones store photos.

    Camera scenes are always composed and averaged in linear light (2.2 gamma) without clipping, and the average is
    clipped afterwards, as a sensor saturates, so that values above white streak.

    Args:
        rng (np.random.Generator): Random source.
        scene (dict): The scene from :func:`sample_scene`; its background motion is changed for hand shake.
        blur_scale (float): Multiplies every motion. Default: 1.0.
        max_blur (float): Cap of each surface's first-to-last motion, pixels. Default: 60.
        static_camera (bool): The camera is still (no hand shake). Default: False.
        without (tuple[str]): Features to switch off. Default: ().

    Returns:
        dict: ``dense``, ``exposure``, ``highlight_gain``, ``lights``, ``noise`` (``shot``, ``read``, ``seed``) or
        None, ``jpeg_quality`` or None.
    """
    on = {name: name not in without for name in CAMERA_FEATURES}
    width, height = scene['size']
    motion = scene['background']['motion']
    if on['handshake'] and not static_camera and rng.random() < 0.7:
        extent = _lognormal_extent(rng, 10.0 * blur_scale, 0.6, max_blur)
        motion.update(velocity=[0.0, 0.0], acceleration=[0.0, 0.0], shake=[],
                      path=sample_handshake(rng, extent, 0.5 * np.hypot(width, height)))
    exposure = float(np.exp(rng.uniform(np.log(0.4), np.log(2.0)))) if on['exposure'] else 1.0
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64).T
    surfaces = [[motion]] + [[motion, layer['motion']] for layer in scene['layers']]

    def travel(e):  # largest first-to-last corner motion of any surface over an exposure of e
        ends = [[np.linalg.multi_dot([np.eye(3)] + [motion_matrix(m, t) for m in chain]) for t in (-e, e)]
                for chain in surfaces]
        return max(float(np.abs(b @ corners - a @ corners).max()) for a, b in ends)

    for _ in range(3):
        reach = travel(exposure)
        if exposure <= 1 or reach <= max_blur:
            break
        exposure = max(1.0, exposure * max_blur / reach)
    gain = float(np.exp(rng.uniform(np.log(1.5), np.log(8.0)))) if on['highlights'] and rng.random() < 0.6 else 1.0
    lights = []
    if on['lights'] and rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 7))):
            tint = 1 + rng.uniform(-0.3, 0.3, 3)
            lights.append({'centre': [float(rng.uniform(0, width)), float(rng.uniform(0, height))],
                           'sigma': float(rng.uniform(0.6, 2.0)),
                           'rgb': (tint / tint.max() * np.exp(rng.uniform(np.log(2), np.log(40)))).tolist()})
    noise = None
    if on['noise'] and rng.random() < 0.9:
        log_shot = rng.uniform(np.log(2e-4), np.log(5e-3))
        noise = {'shot': float(np.exp(log_shot)), 'read': float(np.exp(2.18 * log_shot + 1.2 + 0.26 * rng.normal())),
                 'seed': int(rng.integers(2**31))}
    quality = int(rng.integers(70, 96)) if on['jpeg'] and rng.random() < 0.8 else None
    return {'dense': on['dense'], 'exposure': exposure, 'highlight_gain': gain, 'lights': lights, 'noise': noise,
            'jpeg_quality': quality}


def _resize(photo, factor):
    h, w = photo.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def _prepare_texture(photo, hflip, needed_w, needed_h, zoom_out, offset):
    """Resize a photo so that a ``needed_w x needed_h`` window fits (anti-aliased); return it and the window origin.

    ``zoom_out`` in (0, 1] picks how much of the photo the window covers (1: as much as fits).
    """
    h, w = photo.shape[:2]
    fit = min(w / needed_w, h / needed_h)  # photo pixels per output pixel when the window just fits
    factor = 1.0 / (fit * zoom_out) if fit * zoom_out > 1 else 1.0 / fit
    texture = _resize(photo, factor * 1.0001)
    if hflip:
        texture = np.ascontiguousarray(texture[:, ::-1])
    th, tw = texture.shape[:2]
    origin = (offset[0] * max(0, tw - needed_w), offset[1] * max(0, th - needed_h))
    return texture, origin


def _shape_alpha(shape, width, height, margin):
    """Soft alpha of a layer on a canvas padded by ``margin`` on every side."""
    canvas = np.zeros((height + 2 * margin, width + 2 * margin), np.float32)
    sub = 16  # sub-pixel precision of cv2 drawing (4 fractional bits)
    if shape['kind'] == 'ellipse':
        cx, cy = shape['centre']
        centre = (int(round((cx + margin) * sub)), int(round((cy + margin) * sub)))
        axes = (int(round(shape['axes'][0] * sub)), int(round(shape['axes'][1] * sub)))
        cv2.ellipse(canvas, centre, axes, shape['angle'], 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    else:
        points = np.round((np.asarray(shape['points']) + margin) * sub).astype(np.int32)
        cv2.fillPoly(canvas, [points], 1.0, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(canvas, (0, 0), shape['feather'])


def _warp(image, dst_to_src, width, height):
    return cv2.warpAffine(
        image, dst_to_src[:2].astype(np.float64), (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT101)


def _translation(dx, dy):
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def _dense_count(surfaces, taus, num):
    """Odd sub-frame count (at least ``num``) with steps of at most ``DENSE_STEP_PX`` along every surface's path."""
    fine = np.linspace(taus[0], taus[-1], 65)
    corners = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], np.float64).T
    length = 0.0
    for motion_at, size in surfaces:
        points = np.stack([motion_at(t) @ (corners * [[size[0]], [size[1]], [1]]) for t in fine])[:, :2]
        length = max(length, float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum(0).max()))
    count = int(np.ceil(length / DENSE_STEP_PX)) + 1
    return int(min(MAX_SUBFRAMES, max(num, count + 1 - count % 2)))


def _srgb(linear):
    return cv2.pow(np.clip(linear, 0, 1), 1.0 / GAMMA)


def _to_linear(texture, camera):
    """sRGB texture -> linear light, near-white pixels brightened by ``camera['highlight_gain']``."""
    linear = cv2.pow(texture, GAMMA)
    gain = camera['highlight_gain']
    if gain > 1:
        weight = np.clip((linear - 0.85) / 0.15, 0, 1)
        linear *= 1 + (gain - 1) * weight * weight
    return linear


def _add_lights(texture, lights, origin):
    """Add Gaussian light sources (``origin``: texture coordinates of output pixel (0, 0) at rest), in place."""
    th, tw = texture.shape[:2]
    for light in lights:
        cx, cy = light['centre'][0] + origin[0], light['centre'][1] + origin[1]
        r = int(np.ceil(4 * light['sigma']))
        x0, x1 = max(0, int(cx) - r), min(tw, int(cx) + r + 2)
        y0, y1 = max(0, int(cy) - r), min(th, int(cy) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        xs, ys = np.arange(x0, x1) - cx, np.arange(y0, y1) - cy
        blob = np.exp(-(ys[:, None]**2 + xs[None, :]**2) / (2 * light['sigma']**2)).astype(np.float32)
        texture[y0:y1, x0:x1] += blob[..., None] * np.asarray(light['rgb'], np.float32)


def _camera_output(linear_mean, camera):
    """Average in linear light -> clipped, noisy, gamma-encoded and maybe JPEG-compressed, as a camera stores it."""
    clean = np.clip(linear_mean, 0, 1)
    noisy = clean
    if camera['noise']:
        noise = np.random.default_rng(camera['noise']['seed']).standard_normal(clean.shape, dtype=np.float32)
        noise *= np.sqrt(camera['noise']['shot'] * clean + camera['noise']['read'])
        noisy = noise + clean
    image = _srgb(noisy)
    if camera['jpeg_quality']:
        ok, buf = cv2.imencode('.jpg', _to_uint8_bgr(image), [cv2.IMWRITE_JPEG_QUALITY, camera['jpeg_quality']])
        if not ok:
            raise IOError('JPEG encoding failed')
        image = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return image, _srgb(clean)


def render_scene(scene, photos, return_subframes=False):
    """Render a scene description into a GoPro-style sample.

    With ``scene['camera']`` (``realism='camera'``) the sub-frames are composed and averaged in linear light without
    clipping (values above 1 streak), then the average is clipped, gets sensor noise, the 2.2 gamma and JPEG
    compression (see :func:`sample_camera`); the sharp frame is the clipped middle sub-frame.

    Args:
        scene (dict): From :func:`sample_scene`.
        photos (list[ndarray]): Float32 RGB photos the scene's indices refer to.
        return_subframes (bool): Also return the sub-frames (gamma-encoded, clipped) and, per sub-frame, the index of
            the surface visible at each pixel (0: background, j: layer j). Default: False.

    Returns:
        dict: ``sharp``, ``blur``, ``blur_gamma``: float32 RGB ``(H, W, 3)`` in ``[0, 1]`` (camera realism:
        ``blur`` is the camera's image, ``blur_gamma`` the same average without noise and compression);
        ``flow``: float32 ``(H, W, 4)`` exact flow middle -> first / last in pixels; ``labels_middle``: int
        ``(H, W)``; ``num_subframes``: sub-frames rendered; with ``return_subframes``, ``subframes``
        ``(N, H, W, 3)`` and ``labels`` ``(N, H, W)``.
    """
    width, height = scene['size']
    camera = scene.get('camera')
    num = scene['num_subframes']
    exposure = camera['exposure'] if camera else 1.0
    taus = np.linspace(-exposure, exposure, num)
    bg = scene['background']
    own_motions = [layer['motion'] for layer in scene['layers']]
    if camera and camera['dense']:
        def layer_at(m):
            return lambda t: motion_matrix(bg['motion'], t) @ motion_matrix(m, t)
        num = _dense_count([(lambda t: motion_matrix(bg['motion'], t), (width, height))] +
                           [(layer_at(m), (width, height)) for m in own_motions], taus, num)
        taus = np.linspace(-exposure, exposure, num)
    bg_motions = [motion_matrix(bg['motion'], t) for t in taus]
    margin = int(np.ceil(_max_displacement([np.linalg.inv(m) for m in bg_motions], width, height))) + 2
    bg_texture, (ox, oy) = _prepare_texture(photos[bg['photo']], bg['hflip'], width + 2 * margin,
                                            height + 2 * margin, bg['zoom_out'], bg['offset'])
    # output p -> texture coordinates at rest; integer origin keeps the sharp frame free of resampling blur
    bg_base = _translation(round(ox) + margin, round(oy) + margin)
    if camera:
        bg_texture = _to_linear(bg_texture, camera)
        _add_lights(bg_texture, camera['lights'], (round(ox) + margin, round(oy) + margin))

    layer_data = []
    for layer, own_motion in zip(scene['layers'], own_motions):
        own = [motion_matrix(own_motion, t) for t in taus]
        motions = [cam @ m for cam, m in zip(bg_motions, own)]  # object motion, then the camera's
        reach = int(np.ceil(_max_displacement(motions, width, height))) + 4
        alpha = _shape_alpha(layer['shape'], width, height, reach)
        texture, (tx, ty) = _prepare_texture(photos[layer['photo']], layer['hflip'], width + 2 * reach,
                                             height + 2 * reach, layer['zoom_out'], layer['texture_offset'])
        texture = np.clip(texture * layer['gain'], 0, 1)
        if camera:
            texture = _to_linear(texture, camera)
        layer_data.append((motions, alpha, texture, _translation(tx + reach, ty + reach), reach))

    middle = num // 2
    subframes, labels = [], []
    linear_sum = np.zeros((height, width, 3), np.float32)
    gamma_sum = np.zeros((height, width, 3), np.float32)
    for i in range(num):
        inv_bg = np.linalg.inv(bg_motions[i])
        frame = _warp(bg_texture, bg_base @ inv_bg, width, height)
        need_label = return_subframes or i == middle
        label = np.zeros((height, width), np.int32) if need_label else None
        for j, (motions, alpha, texture, tex_base, reach) in enumerate(layer_data, start=1):
            inv = np.linalg.inv(motions[i])
            a = _warp(alpha, _translation(reach, reach) @ inv, width, height)
            content = _warp(texture, tex_base @ inv, width, height)
            # frame = frame * (1 - a) + content * a, in place
            content -= frame
            content *= a[..., None]
            frame += content
            if need_label:
                label[a > 0.5] = j
        if camera:  # linear light, unclipped
            linear_sum += frame
            shown = _srgb(frame) if return_subframes or i == middle else None
        else:
            np.clip(frame, 0, 1, out=frame)
            linear_sum += frame
            gamma_sum += cv2.pow(frame, GAMMA)
            shown = frame
        if i == middle:
            sharp, label_middle = shown, label
        if return_subframes:
            subframes.append(shown)
            labels.append(label)

    # exact flows of the surface visible at each pixel of the middle frame: G(tau) p - p at the first and last tau
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    flow = np.zeros((height, width, 4), np.float32)
    surfaces = [bg_motions] + [d[0] for d in layer_data]
    for j, motions in enumerate(surfaces):
        visible = label_middle == j
        if not visible.any():
            continue
        for channel, matrix in ((0, motions[0]), (2, motions[-1])):
            (a, b, c), (d, e, f) = matrix[:2].astype(np.float32)
            flow[..., channel][visible] = ((a - 1) * xs + b * ys + c)[visible]
            flow[..., channel + 1][visible] = (d * xs + (e - 1) * ys + f)[visible]

    if camera:
        blur, blur_gamma = _camera_output(linear_sum / num, camera)
    else:
        blur, blur_gamma = linear_sum / num, cv2.pow(gamma_sum / num, 1.0 / GAMMA)
    result = {
        'sharp': sharp,
        'blur': blur,
        'blur_gamma': blur_gamma,
        'flow': flow,
        'labels_middle': label_middle,
        'num_subframes': num,
    }
    if return_subframes:
        result['subframes'] = np.stack(subframes)
        result['labels'] = np.stack(labels)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Dataset writer

_WORKER = {}


def _sample_rng(seed, split, index):
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def _init_worker(photo_paths):
    _WORKER['photos'] = [load_photo(p) for p in photo_paths]


def _to_uint8_bgr(image):
    return cv2.cvtColor(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def _write_png(path, array, compress_level=1):
    ok, buf = cv2.imencode('.png', array, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise IOError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def sample_key(split, index):
    """GoPro-style ``<SEQ>/<NNNNNN>`` name of sample ``index`` (no dots, usable as an LMDB key)."""
    return f'SYN_{split}_{index // FRAMES_PER_SEQUENCE:04d}/{index % FRAMES_PER_SEQUENCE:06d}'


def _render_and_write(task):
    index, out_dir, seed, split, width, height, blur_scale, max_blur, realism, without = task
    photos = _WORKER['photos']
    rng = _sample_rng(seed, split, index)
    scene = sample_scene(rng, len(photos), width, height, blur_scale, max_blur, realism=realism, without=without)
    sample = render_scene(scene, photos)
    flow = np.clip(sample['flow'], FLOW_MIN, FLOW_MAX)  # max_blur keeps flows far inside; never wrap around
    key = sample_key(split, index)
    seq, name = key.split('/')
    for folder in ('blur', 'blur_gamma', 'sharp', 'flow'):
        os.makedirs(osp.join(out_dir, seq, folder), exist_ok=True)
    _write_png(osp.join(out_dir, seq, 'blur', f'{name}.png'), _to_uint8_bgr(sample['blur']))
    _write_png(osp.join(out_dir, seq, 'blur_gamma', f'{name}.png'), _to_uint8_bgr(sample['blur_gamma']))
    _write_png(osp.join(out_dir, seq, 'sharp', f'{name}.png'), _to_uint8_bgr(sample['sharp']))
    with open(osp.join(out_dir, seq, 'flow', f'{name}.png'), 'wb') as f:
        f.write(encode_flow(flow))
    extent = blur_extent(flow)
    hist, _ = np.histogram(np.minimum(extent, HIST_BINS * HIST_BIN_PX - 1e-3), HIST_BINS, (0, HIST_BINS * HIST_BIN_PX))
    record = {
        'key': key,
        'num_subframes': sample['num_subframes'],
        'num_layers': len(scene['layers']),
        'blur_extent_mean': round(float(extent.mean()), 3),
        'blur_extent_max': round(float(extent.max()), 3),
    }
    if 'camera' in scene:
        camera = scene['camera']
        record.update(exposure=round(camera['exposure'], 3), handshake='path' in scene['background']['motion'],
                      highlight_gain=round(camera['highlight_gain'], 3), lights=len(camera['lights']),
                      shot_noise=camera['noise'] and round(camera['noise']['shot'], 6),
                      jpeg_quality=camera['jpeg_quality'])
    return record, hist


def check_replaceable(out_dir, photo_dir=None):
    """Refuse to replace ``out_dir`` unless it is a previous synthesis output and holds no input photographs.

    A previous output holds ``synthesis.json`` and only the sequence folders it lists.

    Raises:
        FileExistsError: ``out_dir`` is something else (named, with the reason).
    """
    real = osp.realpath(out_dir)
    if photo_dir and (osp.realpath(photo_dir) + os.sep).startswith(real + os.sep):
        raise FileExistsError(f'refusing to replace {out_dir}: it contains the photo folder {photo_dir}')
    if osp.islink(out_dir) or not osp.isdir(out_dir):
        raise FileExistsError(f'refusing to replace {out_dir}: not a folder written by the synthesizer')
    try:
        with open(osp.join(out_dir, 'synthesis.json')) as f:
            sequences = {record['key'].split('/')[0] for record in json.load(f)['samples']}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise FileExistsError(f'refusing to replace {out_dir}: no readable synthesis.json, so it is not a previous '
                              'synthesis output; choose another --out or remove it yourself') from None
    def written(name):
        path = osp.join(out_dir, name)
        return name == 'synthesis.json' or (name in sequences and osp.isdir(path) and not osp.islink(path) and
                                            set(os.listdir(path)) <= {'blur', 'blur_gamma', 'sharp', 'flow'})

    others = sorted(name for name in os.listdir(out_dir) if not written(name))
    if others:
        raise FileExistsError(f'refusing to replace {out_dir}: it holds files the synthesizer did not write '
                              f'({", ".join(others[:3])}{", ..." if len(others) > 3 else ""})')


def synthesize_dataset(out_dir, count, photo_dir=None, size=(256, 256), seed=0, workers=1, split='all',
                       overwrite=False, blur_scale=1.0, max_blur=60.0, progress=True, realism='gopro', without=()):
    """Write ``count`` synthetic samples in GoPro layout ``out_dir/<SEQ>/{blur,blur_gamma,sharp,flow}/NNNNNN.png``.

    The tree is written under ``<out_dir>.partial`` and renamed at the end, so an interrupted run never leaves a
    tree that looks complete. ``out_dir/synthesis.json`` records the options, every sample's sub-frame count, layer
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
    _init_worker(photo_paths)  # validates every photo before any work starts

    tmp_dir = out_dir + '.partial'
    if osp.exists(tmp_dir):
        shutil.rmtree(tmp_dir)
    os.makedirs(tmp_dir)
    tasks = [(i, tmp_dir, seed, split, width, height, blur_scale, max_blur, realism, without) for i in range(count)]
    records, histogram = [], np.zeros(HIST_BINS, np.int64)
    bar = tqdm(total=count, unit='sample', desc='synthesize', disable=not progress)
    if workers > 1:
        context = multiprocessing.get_context('fork' if 'fork' in multiprocessing.get_all_start_methods() else None)
        # One OpenCV thread per worker (the processes already fill the cores). It is set in the parent before the
        # fork: changing OpenCV's thread pool inside a forked child deadlocks on the parent's copied pool state.
        opencv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with context.Pool(workers, initializer=_init_worker, initargs=(photo_paths,)) as pool:
                for record, hist in pool.imap(_render_and_write, tasks, chunksize=max(1, count // (8 * workers))):
                    records.append(record)
                    histogram += hist
                    bar.update(1)
        finally:
            cv2.setNumThreads(opencv_threads)
    else:
        for task in tasks:
            record, hist = _render_and_write(task)
            records.append(record)
            histogram += hist
            bar.update(1)
    bar.close()
    extents = np.array([r['blur_extent_mean'] for r in records])
    meta = {
        'options': {
            'count': count, 'size': [width, height], 'seed': seed, 'split': split, 'blur_scale': blur_scale,
            'max_blur': max_blur, 'realism': realism, 'without': list(without),
            'photos': [osp.relpath(p, photo_dir) if photo_dir else osp.basename(p) for p in photo_paths]
        },
        'blur_extent_mean_px': round(float(extents.mean()), 3),
        'histogram': {'bin_px': HIST_BIN_PX, 'counts': histogram.tolist()},
        'samples': records,
    }
    with open(osp.join(tmp_dir, 'synthesis.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    if osp.lexists(out_dir):
        check_replaceable(out_dir, photo_dir)  # again: the folder may have changed during the run
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return meta


def plot_blur_histogram(meta, path, title=None):
    """Save the per-pixel blur-extent histogram of a synthesis run (``synthesis.json`` content) as an image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    counts = np.asarray(meta['histogram']['counts'], np.float64)
    bin_px = meta['histogram']['bin_px']
    edges = np.arange(len(counts) + 1) * bin_px
    last = int(np.nonzero(counts)[0].max()) + 2 if counts.any() else len(counts)
    fraction = counts / max(counts.sum(), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.bar(edges[:last], fraction[:last] * 100, width=bin_px, align='edge', color='#4477aa')
    cumulative = np.cumsum(fraction)
    median = float(edges[np.searchsorted(cumulative, 0.5) + 1])
    p95 = float(edges[np.searchsorted(cumulative, 0.95) + 1])
    ax.axvline(median, color='k', ls='--', lw=1, label=f'median {median:.0f} px')
    ax.axvline(p95, color='#cc6677', ls='--', lw=1, label=f'95th percentile {p95:.0f} px')
    ax.set_xlabel('blur extent |F_first| + |F_last| per pixel (px)')
    ax.set_ylabel('pixels (%)')
    ax.set_title(title or 'Synthetic blur extent distribution')
    ax.legend()
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
