"""Numeric precision and memory layout: which autocast dtype and layout to run in on a device.

One vocabulary for option files and command lines: ``auto``, ``bf16``, ``fp16``, ``fp32`` (``off`` is a synonym of
``fp32`` for training). ``auto`` means bfloat16 where the processor computes it natively (CPUs with AVX512-BF16 or
AMX, CUDA GPUs of compute capability 8.0 or later), float16 on older CUDA GPUs, float32 elsewhere. Mixed precision
always keeps float32 weights (the master copy the optimizer updates and checkpoints store) and runs the forward pass
and the loss under :func:`torch.autocast`.
"""
import contextlib
import functools

import torch

__all__ = ['PRECISIONS', 'autocast', 'cpu_has_native_bf16', 'name_of', 'resolve', 'use_channels_last']
PRECISIONS = ('auto', 'bf16', 'fp16', 'fp32')
_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': None, 'off': None}


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 natively (oneDNN's AVX512-BF16 / AMX kernels)."""
    probe = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve(precision, device):
    """The autocast dtype for a precision name on a device.

    Args:
        precision (str | None): ``auto``, ``bf16``, ``fp16``, ``fp32`` or ``off``; None means ``auto``.
        device (torch.device | str): Where the network runs.

    Returns:
        torch.dtype | None: ``torch.bfloat16`` or ``torch.float16``, or None for plain float32.

    Raises:
        ValueError: An unknown name, or float16 on the CPU (no native float16 there; use bf16).
    """
    device = torch.device(device)
    name = 'auto' if precision is None else str(precision).lower()
    if name == 'false':  # YAML's `off` without quotes
        name = 'off'
    if name != 'auto' and name not in _DTYPES:
        raise ValueError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    if name == 'auto':
        if device.type == 'cuda':
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == 'cpu' and cpu_has_native_bf16() else None
    if name == 'fp16' and device.type == 'cpu':
        raise ValueError('fp16 is not supported on the CPU; use bf16 (or fp32)')
    return _DTYPES[name]


def name_of(dtype):
    """``'bf16'``, ``'fp16'`` or ``'fp32'`` for an autocast dtype (None is float32)."""
    return {torch.bfloat16: 'bf16', torch.float16: 'fp16'}.get(dtype, 'fp32')


def autocast(device, dtype):
    """``torch.autocast`` on ``device`` in ``dtype``, or a no-op context when ``dtype`` is None."""
    device = torch.device(device)
    if dtype is None or device.type not in ('cpu', 'cuda'):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(setting, device, dtype):
    """Whether to keep the network and its inputs channels-last.

    ``auto`` turns it on for the CPU (oneDNN's fastest convolutions, and the layout of the fused deformable
    convolution) and for mixed precision on CUDA (tensor cores).

    Args:
        setting (bool | str | None): True, False, or ``auto`` / None.
        device (torch.device | str): Where the network runs.
        dtype (torch.dtype | None): The autocast dtype, see :func:`resolve`.
    """
    if setting is None or str(setting).lower() == 'auto':
        device = torch.device(device)
        return device.type == 'cpu' or (device.type == 'cuda' and dtype is not None)
    if isinstance(setting, bool):
        return setting
    raise ValueError(f'channels_last must be true, false or auto, got {setting!r}')
