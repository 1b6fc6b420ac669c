"""GoPro-style dynamic-scene blur synthesis with exact bi-directional flows.

A scene is a background photograph seen by a moving camera (smooth path: translation, in-plane rotation and zoom
with velocity and acceleration, sometimes shake) plus foreground layers cut from other photographs (soft-edged
ellipses or polygons) that move on their own and occlude what lies behind them. ``N`` sub-frames (7 to 13, like
GoPro's 240 fps windows) are rendered; the middle one is the sharp image, ``blur_gamma`` averages them after
inverting a 2.2 gamma and ``blur`` averages them linearly. Every surface moves by a known similarity transform, so
the flows middle -> first and middle -> last are exact.

The work is split by job; this module gathers the Python API of all three:

* :mod:`sdnet_plugin.data.scene_motion`: random scene descriptions, the motion model (camera paths, hand shake,
  object motion), the camera parameters and windows of a scene (:func:`sample_scene`, :func:`sample_camera`,
  :func:`motion_matrix`, :func:`crop_scene`);
* :mod:`sdnet_plugin.data.scene_rendering`: :func:`render_scene`, blur averaging, camera realism (noise, JPEG,
  highlights) and the photo scale (:func:`fit_scene`: photos are not upsampled);
* :mod:`sdnet_plugin.data.synthesis_writer`: photographs and the multiprocess dataset writer
  (:func:`synthesize_dataset`).

The command line is ``python -m sdnet_plugin.tools.synthesize_gopro`` (also ``datasets_prep/synthesize_gopro.py``);
:func:`sdnet_plugin.visualize.plot_blur_histogram` draws a run's blur-extent histogram.
"""
from sdnet_plugin.data.scene_motion import (CAMERA_FEATURES, REALISM_CHOICES, SUBFRAME_CHOICES, crop_scene,
                                            motion_matrix, sample_camera, sample_handshake, sample_motion, sample_scene)
from sdnet_plugin.data.scene_rendering import (DENSE_STEP_PX, GAMMA, MAX_SUBFRAMES, background_scale, fit_scene,
                                               render_scene)
from sdnet_plugin.data.synthesis_writer import (IMAGE_EXTENSIONS, MAX_BLUR_LIMIT, SampleWriter, SynthesisJob,
                                                check_replaceable, default_photo_paths, find_photos, load_photo,
                                                split_photos, synthesize_dataset)

__all__ = [
    'CAMERA_FEATURES', 'DENSE_STEP_PX', 'GAMMA', 'IMAGE_EXTENSIONS', 'MAX_BLUR_LIMIT', 'MAX_SUBFRAMES',
    'REALISM_CHOICES', 'SUBFRAME_CHOICES', 'SampleWriter', 'SynthesisJob', 'background_scale', 'check_replaceable',
    'crop_scene', 'default_photo_paths', 'find_photos', 'fit_scene', 'load_photo', 'motion_matrix', 'render_scene',
    'sample_camera', 'sample_handshake', 'sample_motion', 'sample_scene', 'split_photos', 'synthesize_dataset'
]
