"""Rendering of a scene description into a GoPro-style sample, and the camera realism applied to it.

``N`` sub-frames of the scene (:mod:`sdnet_plugin.data.scene_motion`) are rendered by warping the photographs; the
middle one is the sharp image, ``blur_gamma`` averages them after inverting a 2.2 gamma and ``blur`` averages them
linearly. Camera realism composes and averages in linear light without clipping (highlights and light sources
streak), then adds sensor noise, the gamma and JPEG compression. Every surface moves by a known similarity
transform, so the flows middle -> first and middle -> last are exact.
"""
import cv2
import numpy as np

from sdnet_plugin.data.scene_motion import crop_scene, max_displacement, motion_matrix

__all__ = ['GAMMA', 'MAX_SUBFRAMES', 'DENSE_STEP_PX', 'background_scale', 'fit_scene', 'render_scene', 'to_uint8_bgr']

GAMMA = 2.2
MAX_SUBFRAMES = 97  # dense rendering: at most this many sub-frames (steps of at most DENSE_STEP_PX)
DENSE_STEP_PX = 1.0


def to_uint8_bgr(image):
    """Float RGB in ``[0, 1]`` -> uint8 BGR (rounded, clipped), as OpenCV writes it."""
    return cv2.cvtColor(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def _resize(photo, factor):
    h, w = photo.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def _texture_scale(photo_size, needed_w, needed_h, zoom_out):
    """Output pixels per photo pixel that :func:`_prepare_texture` picks for a ``needed_w x needed_h`` window."""
    fit = min(photo_size[0] / needed_w, photo_size[1] / needed_h)  # photo pixels per output pixel, window just fits
    return 1.0 / (fit * zoom_out) if fit * zoom_out > 1 else 1.0 / fit


def _prepare_texture(photo, hflip, needed_w, needed_h, zoom_out, offset, max_upscale=None, alpha=None):
    """Resize a photo so that a ``needed_w x needed_h`` window fits (anti-aliased); return it, the window origin
    (texture coordinates of the window's top-left corner) and the scale factor.

    ``zoom_out`` in (0, 1] picks how much of the photo the window covers (1: as much as fits). When that needs an
    upsampling beyond ``max_upscale`` and ``alpha`` (a layer's alpha on the window) is given, only the pixels where
    ``alpha`` is non-zero (and their bilinear neighbours) are covered, upsampled at most to ``max_upscale`` (more
    only if they do not fit at that scale).
    """
    h, w = photo.shape[:2]
    factor = _texture_scale((w, h), needed_w, needed_h, zoom_out)
    box = (0, 0, needed_w, needed_h)  # the part of the window the texture must cover
    if alpha is not None and max_upscale is not None and factor > max_upscale:
        rows, cols = np.nonzero(alpha.max(1) > 0)[0], np.nonzero(alpha.max(0) > 0)[0]
        if len(rows):
            box = (max(0, cols[0] - 1), max(0, rows[0] - 1), min(needed_w, cols[-1] + 2), min(needed_h, rows[-1] + 2))
            factor = max(max_upscale, (box[2] - box[0]) / w, (box[3] - box[1]) / h)
    texture = _resize(photo, factor * 1.0001)
    if hflip:
        texture = np.ascontiguousarray(texture[:, ::-1])
    th, tw = texture.shape[:2]
    origin = (offset[0] * max(0, tw - box[2] + box[0]) - box[0], offset[1] * max(0, th - box[3] + box[1]) - box[1])
    return texture, origin, factor


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
    return cv2.warpAffine(image, dst_to_src[:2].astype(np.float64), (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)


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
        ok, buf = cv2.imencode('.jpg', to_uint8_bgr(image), [cv2.IMWRITE_JPEG_QUALITY, camera['jpeg_quality']])
        if not ok:
            raise IOError('JPEG encoding failed')
        image = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return image, _srgb(clean)


def _subframe_times(scene):
    """Times ``tau`` of the sub-frames a scene is rendered at (dense camera scenes: steps of at most
    ``DENSE_STEP_PX``)."""
    width, height = scene['size']
    camera = scene.get('camera')
    num = scene['num_subframes']
    exposure = camera['exposure'] if camera else 1.0
    taus = np.linspace(-exposure, exposure, num)
    if camera and camera['dense']:
        bg_motion = scene['background']['motion']

        def layer_at(m):
            return lambda t: motion_matrix(bg_motion, t) @ motion_matrix(m, t)

        num = _dense_count([(lambda t: motion_matrix(bg_motion, t),
                             (width, height))] + [(layer_at(layer['motion']), (width, height))
                                                  for layer in scene['layers']], taus, num)
        taus = np.linspace(-exposure, exposure, num)
    return taus


def _background_window(scene, bg_motions):
    """Margin and size of the background window: the frame plus what the camera motion brings into view."""
    width, height = scene['size']
    margin = int(np.ceil(max_displacement([np.linalg.inv(m) for m in bg_motions], width, height))) + 2
    return margin, width + 2 * margin, height + 2 * margin


def _background_fit(scene, photo_size):
    """Margin of the background window and scale factor of the background photo, as :func:`render_scene` has them."""
    bg = scene['background']
    margin, needed_w, needed_h = _background_window(scene,
                                                    [motion_matrix(bg['motion'], t) for t in _subframe_times(scene)])
    return margin, _texture_scale(photo_size, needed_w, needed_h, bg['zoom_out'])


def background_scale(scene, photo_size):
    """Scale factor (output pixels per photo pixel) :func:`render_scene` applies to a scene's background photo.

    Args:
        scene (dict): From :func:`~sdnet_plugin.data.scene_motion.sample_scene`.
        photo_size (tuple[int, int]): ``(width, height)`` of the background photo.
    """
    return _background_fit(scene, photo_size)[1]


def fit_scene(scene, photo_size, max_upscale=1.0, min_side=256):
    """Shrink a scene's frame until its background photo needs no upsampling beyond ``max_upscale``.

    A photo smaller than the frame plus its motion margins would be upsampled (bicubic), which softens the sharp
    frame. The frame is cut to its centred window of the largest size that fits at ``max_upscale``
    (:func:`~sdnet_plugin.data.scene_motion.crop_scene`: motions and flows unchanged, exact), each side at least
    ``min(min_side, side)``; a photo that does not fit even then is upsampled as little as that allows.

    Args:
        scene (dict): From :func:`~sdnet_plugin.data.scene_motion.sample_scene`.
        photo_size (tuple[int, int]): ``(width, height)`` of the background photo.
        max_upscale (float | None): Largest scale factor allowed; None: no limit. Default: 1.0.
        min_side (int): Smallest side a window is cut to. Default: 256.

    Returns:
        dict: ``scene`` itself when it fits, else the window's scene (``size`` smaller, ``crop`` its origin).
    """
    margin, scale = _background_fit(scene, photo_size)
    if max_upscale is None or scale <= max_upscale:
        return scene
    width, height = scene['size']
    lowest = (min(min_side, width), min(min_side, height))
    fitted, size = scene, (width, height)
    for _ in range(4):  # a window's margin is at most the frame's: this ends after one or two cuts
        size = tuple(
            min(side, max(low,
                          int(np.floor(photo * max_upscale)) - 2 * margin))
            for side, low, photo in zip(size, lowest, photo_size))
        fitted = crop_scene(scene, (width - size[0]) // 2, (height - size[1]) // 2, *size)
        margin, scale = _background_fit(fitted, photo_size)
        if scale <= max_upscale or size == lowest:
            break
    return fitted


def render_scene(scene, photos, return_subframes=False, max_upscale=None):
    """Render a scene description into a GoPro-style sample.

    With ``scene['camera']`` (``realism='camera'``) the sub-frames are composed and averaged in linear light without
    clipping (values above 1 streak), then the average is clipped, gets sensor noise, the 2.2 gamma and JPEG
    compression (see :func:`sample_camera`); the sharp frame is the clipped middle sub-frame.

    Args:
        scene (dict): From :func:`sample_scene` (and :func:`fit_scene`, which keeps the background photo from being
            upsampled).
        photos (list[ndarray]): Float32 RGB photos the scenes' indices refer to.
        return_subframes (bool): Also return the sub-frames (gamma-encoded, clipped) and, per sub-frame, the index of
            the surface visible at each pixel (0: background, j: layer j). Default: False.
        max_upscale (float | None): Largest scale factor of a layer's photo: a layer photo too small for the frame
            plus the layer's motion then covers only the layer's shape. Default: None, no limit.

    Returns:
        dict: ``sharp``, ``blur``, ``blur_gamma``: float32 RGB ``(H, W, 3)`` in ``[0, 1]`` (camera realism:
        ``blur`` is the camera's image, ``blur_gamma`` the same average without noise and compression);
        ``flow``: float32 ``(H, W, 4)`` exact flow middle -> first / last in pixels; ``labels_middle``: int
        ``(H, W)``; ``num_subframes``: sub-frames rendered; ``scales``: scale factor (output pixels per photo
        pixel) of the background's and each layer's photo; with ``return_subframes``, ``subframes``
        ``(N, H, W, 3)`` and ``labels`` ``(N, H, W)``.
    """
    width, height = scene['size']
    camera = scene.get('camera')
    taus = _subframe_times(scene)
    num = len(taus)
    bg = scene['background']
    bg_motions = [motion_matrix(bg['motion'], t) for t in taus]
    margin, needed_w, needed_h = _background_window(scene, bg_motions)
    bg_texture, (ox, oy), bg_scale = _prepare_texture(photos[bg['photo']], bg['hflip'], needed_w, needed_h,
                                                      bg['zoom_out'], bg['offset'])
    # output p -> texture coordinates at rest; integer origin keeps the sharp frame free of resampling blur
    bg_base = _translation(round(ox) + margin, round(oy) + margin)
    if camera:
        bg_texture = _to_linear(bg_texture, camera)
        _add_lights(bg_texture, camera['lights'], (round(ox) + margin, round(oy) + margin))

    layer_data, scales = [], [bg_scale]
    for layer in scene['layers']:
        own = [motion_matrix(layer['motion'], t) for t in taus]
        motions = [cam @ m for cam, m in zip(bg_motions, own)]  # object motion, then the camera's
        reach = int(np.ceil(max_displacement(motions, width, height))) + 4
        alpha = _shape_alpha(layer['shape'], width, height, reach)
        texture, (tx, ty), scale = _prepare_texture(photos[layer['photo']], layer['hflip'], width + 2 * reach,
                                                    height + 2 * reach, layer['zoom_out'], layer['texture_offset'],
                                                    max_upscale, alpha)
        scales.append(scale)
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
        'scales': scales,
    }
    if return_subframes:
        result['subframes'] = np.stack(subframes)
        result['labels'] = np.stack(labels)
    return result
