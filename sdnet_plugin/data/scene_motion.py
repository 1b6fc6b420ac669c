"""Random scene descriptions for blur synthesis: the motion model and what a camera adds.

Every surface (the background seen by the camera, each foreground layer) moves by a similarity transform of image
coordinates ``G(tau)``, ``tau`` in ``[-1, 1]`` over the nominal exposure, ``G(0)`` = identity: a smooth camera path
(translation, in-plane rotation and zoom with velocity and acceleration, sometimes high-frequency shake), a curved
hand-shake path (:func:`sample_handshake`), or an object's own motion composed with the camera's. Scenes are plain
JSON-serialisable dicts (:func:`sample_scene`, :func:`sample_camera`) that :mod:`sdnet_plugin.data.scene_rendering`
turns into pixels; for a given random generator state the description is always the same.
"""
import copy

import numpy as np

__all__ = [
    'SUBFRAME_CHOICES', 'REALISM_CHOICES', 'CAMERA_FEATURES', 'motion_matrix', 'max_displacement', 'sample_handshake',
    'sample_motion', 'sample_scene', 'sample_camera', 'crop_scene'
]

SUBFRAME_CHOICES = (7, 9, 11, 13)
# Camera realism (``realism='camera'``): what a handheld photograph adds to GoPro-style averaging. Each feature can be
# switched off on its own (``without``); see :func:`sample_camera`.
REALISM_CHOICES = ('gopro', 'camera')
CAMERA_FEATURES = ('dense', 'exposure', 'handshake', 'highlights', 'lights', 'noise', 'jpeg')

# Matrices are 3x3 acting on (x, y, 1).


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


def max_displacement(matrices, width, height):
    """Largest displacement of an image corner under any of the ``matrices``, pixels."""
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
        rng, width, height,
        [rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height], (0.5 if static_camera else 10.0) * blur_scale,
        max_blur)
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
            lights.append({
                'centre': [float(rng.uniform(0, width)), float(rng.uniform(0, height))],
                'sigma': float(rng.uniform(0.6, 2.0)),
                'rgb': (tint / tint.max() * np.exp(rng.uniform(np.log(2), np.log(40)))).tolist()
            })
    noise = None
    if on['noise'] and rng.random() < 0.9:
        log_shot = rng.uniform(np.log(2e-4), np.log(5e-3))
        noise = {
            'shot': float(np.exp(log_shot)),
            'read': float(np.exp(2.18 * log_shot + 1.2 + 0.26 * rng.normal())),
            'seed': int(rng.integers(2**31))
        }
    quality = int(rng.integers(70, 96)) if on['jpeg'] and rng.random() < 0.8 else None
    return {
        'dense': on['dense'],
        'exposure': exposure,
        'highlight_gain': gain,
        'lights': lights,
        'noise': noise,
        'jpeg_quality': quality
    }


def crop_scene(scene, x0, y0, width, height):
    """The window ``[x0, x0 + width) x [y0, y0 + height)`` of a scene's frame, as a scene of its own (a copy).

    Every centre (of rotation and zoom, of a shape, of a light) moves by ``-(x0, y0)``: each surface performs the same
    motion as in the whole frame, seen through the window, so the rendered window's flows stay exact.
    ``scene['crop']`` accumulates the window's origin in the original frame.

    Args:
        scene (dict): From :func:`sample_scene`.
        x0 (int): Left column of the window.
        y0 (int): Top row of the window.
        width (int): Window width.
        height (int): Window height.
    """
    scene = copy.deepcopy(scene)

    def move(points):
        return (np.asarray(points, np.float64) - [x0, y0]).tolist()

    motions = [scene['background']['motion']] + [layer['motion'] for layer in scene['layers']]
    for item in motions + [layer['shape'] for layer in scene['layers']] + scene.get('camera', {}).get('lights', []):
        item['centre'] = move(item['centre'])
    for layer in scene['layers']:
        if 'points' in layer['shape']:
            layer['shape']['points'] = move(layer['shape']['points'])
    origin = scene.get('crop', [0, 0])
    scene.update(size=[int(width), int(height)], crop=[origin[0] + int(x0), origin[1] + int(y0)])
    return scene
