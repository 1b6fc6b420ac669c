"""Bi-directional flow files: 16-bit 4-channel PNGs that travel through BasicSR's image tools (LMDB included).

A flow ``(H, W, 4)`` = ``(u_first, v_first, u_last, v_last)`` in pixels (project convention) is stored as
``round(flow * FLOW_SCALE) + FLOW_OFFSET`` in a ``uint16`` PNG, channels in that order as the array is handed to
OpenCV. Range: ``[-512, 512 - 1/64]`` pixels, precision ``1/64`` pixel. Values outside the range are an error, never
a wrap-around.
"""
import os

import cv2
import numpy as np

from sdnet_plugin.file_safety import write_bytes

__all__ = [
    'FLOW_CHANNELS', 'FLOW_MAX', 'FLOW_MIN', 'FLOW_OFFSET', 'FLOW_SCALE', 'decode_flow', 'dequantize_flow',
    'encode_flow', 'quantize_flow', 'read_flow', 'write_flow'
]

FLOW_SCALE = 64.0
FLOW_OFFSET = 32768
FLOW_MIN = -FLOW_OFFSET / FLOW_SCALE
FLOW_MAX = (65535 - FLOW_OFFSET) / FLOW_SCALE
FLOW_CHANNELS = 4


def quantize_flow(flow):
    """Flow ``(H, W, 4)`` in pixels -> ``uint16`` array in the stored encoding.

    Raises:
        ValueError: Wrong shape, non-finite values or values outside ``[FLOW_MIN, FLOW_MAX]``.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != FLOW_CHANNELS:
        raise ValueError(f'flow must be (H, W, 4) = (u_first, v_first, u_last, v_last), got {flow.shape}')
    if not np.all(np.isfinite(flow)):
        raise ValueError('flow contains NaN or infinite values')
    stored = np.round(flow.astype(np.float64) * FLOW_SCALE) + FLOW_OFFSET
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f'flow values [{flow.min():.2f}, {flow.max():.2f}] px exceed the storable range '
                         f'[{FLOW_MIN}, {FLOW_MAX}] px')
    return stored.astype(np.uint16)


def dequantize_flow(stored, name='flow'):
    """``uint16`` array ``(H, W, 4)`` in the stored encoding -> float32 flow in pixels.

    Args:
        stored (ndarray): Decoded PNG content.
        name (str): File or key named in errors. Default: ``'flow'``.
    """
    if stored.dtype != np.uint16 or stored.ndim != 3 or stored.shape[2] != FLOW_CHANNELS:
        shape = stored.shape
        raise ValueError(f'{name}: not a flow image (expected 16-bit 4-channel PNG, got {stored.dtype} {shape})')
    return (stored.astype(np.float32) - FLOW_OFFSET) / FLOW_SCALE


def encode_flow(flow, compress_level=1):
    """Flow ``(H, W, 4)`` in pixels -> PNG bytes."""
    ok, buf = cv2.imencode('.png', quantize_flow(flow), [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ValueError('OpenCV could not encode the flow as PNG')
    return buf.tobytes()


def decode_flow(content, name='flow'):
    """PNG bytes (from disk or an LMDB) -> float32 flow ``(H, W, 4)`` in pixels.

    BasicSR's ``imfrombytes`` decodes as 8-bit colour, so flows are decoded here with ``IMREAD_UNCHANGED``.

    Args:
        content (bytes): Encoded PNG.
        name (str): File or key named in errors. Default: ``'flow'``.
    """
    if content is None or len(content) == 0:
        raise IOError(f'{name}: empty or missing flow data')
    stored = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if stored is None:
        raise IOError(f'{name}: unreadable or truncated flow PNG')
    return dequantize_flow(stored, name)


def write_flow(path, flow, compress_level=1):
    """Write a flow PNG atomically (:func:`sdnet_plugin.file_safety.write_bytes`: an interrupted write never leaves a
    partial file; the folder is created when missing).

    Args:
        path (str | Path): Destination ``.png``.
        flow (ndarray): ``(H, W, 4)`` in pixels.
        compress_level (int): PNG compression, 0-9. Default: 1.
    """
    write_bytes(path, encode_flow(flow, compress_level))


def read_flow(path):
    """Read a flow PNG -> float32 ``(H, W, 4)`` in pixels."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'flow file not found: {path}')
    with open(path, 'rb') as f:
        return decode_flow(f.read(), path)
