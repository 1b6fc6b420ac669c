"""The ``'fused'`` CPU backend of :func:`sdnet_plugin.ops.modulated_deform_conv2d`.

A small C++/OpenMP kernel (``csrc/dcn_cpu.cpp``) samples the masked bilinear columns of a channels-last input, so
every corner read is a contiguous vector of channels; torch then contracts the columns with the weights in one
matrix product (oneDNN, on AMX for bfloat16). The backward pass runs the two weight-side matrix products in torch
and scatters the gradients of the input, offsets and masks in the kernel. Inference works through bands of output
rows whose columns stay in the cache.

In bfloat16 on a processor with AMX (16, 32, 64 or 128 input channels) the kernel does everything itself, one call
for the forward and one for the backward pass: the columns of 16 pixels of a row are contracted with the weights on
AMX tiles while still in the first-level cache, so no columns are written to memory or kept for the backward pass,
which samples them again, computes the column gradient and the weight and bias gradients on tiles, and scatters the
input gradient straight into one float32 buffer (threads take whole images when they divide the batch).
``USE_TILES = False`` turns this path off.

The kernel is plain C++ without Python or torch headers, loaded with :mod:`ctypes`, and compiled with the system's
C++ compiler (``$CXX``, else ``g++`` or ``c++``; about a second) the first time it is needed, into a cache folder
(``$SDNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdnet_plugin``, else ``~/.cache/sdnet_plugin``) keyed by the source,
the flags and the processor. ``make install`` builds it ahead of time. Without a compiler the backend is simply not
available and ``'auto'`` picks another one.

Supported: CPU tensors of float32, float64 and bfloat16 (bfloat16 sampling is accumulated in float32).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from os import path as osp

import torch

from sdnet_plugin.file_safety import atomic_path

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'dcn_cpu.cpp')
CXXFLAGS = ('-O3', '-march=native', '-mprefer-vector-width=512', '-fno-trapping-math', '-fopenmp', '-shared', '-fPIC',
            '-std=c++17')
_ABI_VERSION = 5
_DTYPE_NAMES = {torch.float32: 'float32', torch.float64: 'float64', torch.bfloat16: 'bfloat16'}
# Kernel variants: (element type of x and the columns, element type of the offsets and masks).
_VARIANTS = ((torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
             (torch.bfloat16, torch.bfloat16))
# Columns per thread of one kernel call: about this many bytes, so that sampling and the matrix products meet in the
# cache and large buffers are never allocated whole (fresh pages cost more than the work on them). Inference, with
# one workspace reused and no backward pass, does best with larger calls (fewer Python round trips; measured at
# 1280x720: 123 ms at 4 MB against 155 ms at 1 MB per call and thread); training with 1 MB (80 ms against 90 ms).
_CHUNK_BYTES = 1 << 20
_INFERENCE_CHUNK_BYTES = 1 << 22
# bfloat16 with 16, 32, 64 or 128 input channels on a processor with AMX: the kernel runs the matrix products itself on
# blocks of a row's pixels (no columns in memory, none kept for the backward pass, one call per convolution).
USE_TILES = True
_TILE_CHANNELS = (16, 32, 64, 128)


def cache_dir():
    """Folder of the compiled kernel."""
    if os.environ.get('SDNET_CACHE_DIR'):
        return os.environ['SDNET_CACHE_DIR']
    base = os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return osp.join(base, 'sdnet_plugin')


def _compiler():
    for name in (os.environ.get('CXX'), 'g++', 'c++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature():
    """What ``-march=native`` depends on: the processor's model and feature flags."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags'))][:2]
    except OSError:
        lines = []
    return platform.machine() + ''.join(lines)


def library_path():
    """Where the kernel for this source, these flags and this processor is (or will be) built."""
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read() + ' '.join(CXXFLAGS).encode() + _cpu_signature().encode()).hexdigest()
    return osp.join(cache_dir(), f'dcn_cpu_{digest[:16]}.so')


def build(verbose=False):
    """Compile the kernel into :func:`library_path` unless it is there already.

    Args:
        verbose (bool): Print the compiler command. Default: False.

    Returns:
        str: Path of the shared library.

    Raises:
        RuntimeError: No C++ compiler, or compilation failed (with the compiler's message).
    """
    target = library_path()
    if osp.isfile(target):
        return target
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError('no C++ compiler found (set CXX, or install g++)')
    os.makedirs(osp.dirname(target), exist_ok=True)
    # A unique temporary name in the same folder, then an atomic rename: concurrent builds never load half a file.
    with atomic_path(target) as tmp:
        command = [compiler, *CXXFLAGS, '-o', tmp, SOURCE]
        if verbose:
            print(' '.join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f'compiling {SOURCE} failed:\n{result.stderr.strip()}')
    return target


@functools.lru_cache(maxsize=None)
def library():
    """The loaded kernel, built on first use; None (with a warning) when it cannot be built or loaded."""
    if os.environ.get('SDNET_DCN_NO_BUILD') and not osp.isfile(library_path()):
        return None
    try:
        lib = ctypes.CDLL(build())
        if lib.sdnet_dcn_abi_version() != _ABI_VERSION:
            raise RuntimeError('stale kernel library')
    except (OSError, RuntimeError) as error:
        warnings.warn(f'fused CPU deformable convolution unavailable ({error}); using another backend')
        return None
    pointer, i64p, c_int = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int
    for variant in _VARIANTS:
        name = '_'.join(_DTYPE_NAMES[t] for t in variant)
        getattr(lib, f'sdnet_dcn_im2col_{name}').argtypes = [pointer] * 3 + [i64p, i64p, pointer, c_int]
        getattr(lib, f'sdnet_dcn_col2im_{name}').argtypes = ([pointer] * 3 + [i64p, i64p] + [pointer] * 4 +
                                                             [c_int, ctypes.c_int64])
    for name in ('float32', 'bfloat16'):
        getattr(lib, f'sdnet_dcn_forward_tiles_{name}'
                ).argtypes = [pointer] * 3 + [i64p, i64p] + [pointer] * 2 + [ctypes.c_int64, pointer, c_int]
        getattr(lib,
                f'sdnet_dcn_backward_tiles_{name}').argtypes = ([pointer] * 3 + [i64p, i64p, pointer, ctypes.c_int64] +
                                                                [pointer] * 6 + [c_int, c_int, ctypes.c_int64])
    return lib


def is_available():
    return library() is not None


def tiles_ready():
    """Whether the fused bfloat16 path on AMX tiles runs here (and is not switched off by ``USE_TILES``)."""
    return USE_TILES and library() is not None and library().sdnet_dcn_tiles_ready() == 1


def _int64_array(values):
    return (ctypes.c_int64 * len(values))(*values)


class _Sampler:
    """Pointers and geometry shared by the kernel calls of one convolution; calls work on rows of one image."""

    def __init__(self, x, offset, mask, kernel_size, stride, padding, dilation, chunk_bytes=None):
        self.x, self.offset, self.mask = x, offset, mask  # keep the tensors alive while their pointers are used
        b, c, h, w = x.shape
        self.ho, self.wo = offset.shape[-2:]
        self.k = kernel_size[0] * kernel_size[1]
        self.dims = [1, c, h, w, self.ho, self.wo, 0, self.ho, *kernel_size, *stride, *padding, *dilation]
        xs, os_, ms = x.stride(), offset.stride(), mask.stride()
        self.strides = _int64_array([xs[0], xs[2], xs[3], *os_, *ms])
        name = f'{_DTYPE_NAMES[x.dtype]}_{_DTYPE_NAMES[offset.dtype]}'
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        lib = library()
        self.im2col_fn = getattr(lib, f'sdnet_dcn_im2col_{name}')
        self.col2im_fn = getattr(lib, f'sdnet_dcn_col2im_{name}')
        # Rows per call: columns of about chunk_bytes per thread (default _CHUNK_BYTES), at least one row per thread.
        threads = torch.get_num_threads()
        row_bytes = self.wo * self.k * c * x.element_size()
        self.chunk_rows = min(self.ho, max(threads, threads * (chunk_bytes or _CHUNK_BYTES) // row_bytes))
        self.chunks = [(i, row, min(self.chunk_rows, self.ho - row)) for i in range(b)
                       for row in range(0, self.ho, self.chunk_rows)]
        self.tiles = x.dtype == torch.bfloat16 and c in _TILE_CHANNELS and tiles_ready()
        if self.tiles:
            self.forward_tiles_fn = getattr(lib, f'sdnet_dcn_forward_tiles_{_DTYPE_NAMES[offset.dtype]}')
            self.backward_tiles_fn = getattr(lib, f'sdnet_dcn_backward_tiles_{_DTYPE_NAMES[offset.dtype]}')

    def _pointers(self, image, row0, rows):
        dims = list(self.dims)
        dims[6:8] = row0, rows
        return (self.x[image].data_ptr(), self.offset[image].data_ptr(), self.mask[image].data_ptr(),
                _int64_array(dims), self.strides)

    def _whole(self):
        dims = list(self.dims)
        dims[0] = self.x.shape[0]
        return self.x.data_ptr(), self.offset.data_ptr(), self.mask.data_ptr(), _int64_array(dims), self.strides

    def forward_tiles(self, weight_2d, bias):
        """Output ``(B, C_out, Ho, Wo)`` (channels-last memory) of the whole batch in one kernel call."""
        out = torch.empty(self.x.shape[0], weight_2d.shape[0], self.ho, self.wo, dtype=torch.bfloat16,
                          memory_format=torch.channels_last)
        bias = None if bias is None else bias.to(torch.float32).contiguous()
        self.forward_tiles_fn(*self._whole(), weight_2d.data_ptr(), None if bias is None else bias.data_ptr(),
                              weight_2d.shape[0], out.data_ptr(), torch.get_num_threads())
        return out

    def backward_tiles(self, weight_2d, grad, gx, goffset, gmask, gweight, gbias):
        """From ``grad`` ``(B, Ho, Wo, C_out)``: the input gradient into ``gx[0]`` (``gx`` ``(copies, B, H, W, C)``,
        uninitialised: one copy, or one per thread), ``goffset`` and ``gmask`` (as in :meth:`col2im`, whole batch),
        ``gweight`` ``(C_out, K * C)`` and ``gbias`` ``(C_out)``."""
        self.backward_tiles_fn(*self._whole(), weight_2d.data_ptr(), weight_2d.shape[0], grad.data_ptr(), gx.data_ptr(),
                               goffset.data_ptr(), gmask.data_ptr(), gweight.data_ptr(), gbias.data_ptr(),
                               torch.get_num_threads(), gx.shape[0], gx[0].numel())

    def im2col(self, cols, image, row0, rows):
        """Masked samples of rows ``row0 ...`` of one image into ``cols`` ``(rows * W_out, K * C)``."""
        self.im2col_fn(*self._pointers(image, row0, rows), cols.data_ptr(), torch.get_num_threads())

    def col2im(self, gcols, image, row0, rows, gx, goffset, gmask):
        """Accumulate into ``gx`` ``(copies, B, H, W, C)`` and write rows of ``goffset`` ``(B, Ho, Wo, K, 2)`` and
        ``gmask`` ``(B, Ho, Wo, K)`` from the gradient ``gcols`` ``(rows * W_out, K * C)`` of the masked samples."""
        self.col2im_fn(*self._pointers(image, row0, rows), gcols.data_ptr(), gx[0, image].data_ptr(),
                       goffset[image, row0].data_ptr(), gmask[image, row0].data_ptr(), gx.shape[0], gx[0].numel())


def _prepare(x, offset, mask, weight, compute_dtype):
    if x.device.type != 'cpu':
        raise RuntimeError('the fused backend runs on the CPU only')
    if compute_dtype not in _DTYPE_NAMES:
        raise TypeError(f'the fused backend supports {", ".join(map(str, _DTYPE_NAMES))}, got {compute_dtype}')
    acc = torch.float64 if compute_dtype == torch.float64 else torch.float32
    if compute_dtype == torch.bfloat16 and offset.dtype == mask.dtype == torch.bfloat16:
        acc = torch.bfloat16  # read as they come; positions are still computed in float32
    x = x.to(compute_dtype).contiguous(memory_format=torch.channels_last)
    # (C_out, C_in, kh, kw) -> (C_out, kh * kw * C_in): the order of the columns' (k, c) axis.
    weight_2d = weight.to(compute_dtype).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return x, offset.to(acc), mask.to(acc), weight_2d


def _forward(sampler, weight_2d, bias, keep_columns):
    """Output ``(B, C_out, Ho, Wo)`` (channels-last memory) chunk by chunk, the bias added by the matrix product, and
    the columns of each chunk when ``keep_columns``."""
    b, c = sampler.x.shape[:2]
    out = torch.empty(b, weight_2d.shape[0], sampler.ho, sampler.wo, dtype=weight_2d.dtype,
                      memory_format=torch.channels_last)
    rows_view = out.permute(0, 2, 3, 1)  # (B, Ho, Wo, C_out), contiguous
    weight_t = weight_2d.t()
    bias = None if bias is None else bias.to(weight_2d.dtype)
    kept, workspace = [], None
    for image, row, rows in sampler.chunks:
        size = rows * sampler.wo
        if keep_columns:
            cols = torch.empty(size, weight_2d.shape[1], dtype=weight_2d.dtype)
            kept.append(cols)
        else:
            if workspace is None:
                workspace = torch.empty(sampler.chunk_rows * sampler.wo, weight_2d.shape[1], dtype=weight_2d.dtype)
            cols = workspace[:size]
        sampler.im2col(cols, image, row, rows)
        target = rows_view[image, row:row + rows].view(size, -1)
        if bias is None:
            torch.mm(cols, weight_t, out=target)
        else:
            torch.addmm(bias, cols, weight_t, out=target)
    return out, kept  # not a view: autograd lets callers modify it in place


class _FusedDeformConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, padding, dilation, compute_dtype):
        in_dtypes = (x.dtype, offset.dtype, mask.dtype, weight.dtype, None if bias is None else bias.dtype)
        x, offset, mask, weight_2d = _prepare(x, offset, mask, weight, compute_dtype)
        sampler = _Sampler(x, offset, mask, weight.shape[-2:], stride, padding, dilation)
        if sampler.tiles:
            out, cols = sampler.forward_tiles(weight_2d, bias), []
        else:
            out, cols = _forward(sampler, weight_2d, bias, keep_columns=True)
        ctx.save_for_backward(x, offset, mask, weight_2d, *cols)
        ctx.geometry = (tuple(weight.shape), stride, padding, dilation, in_dtypes)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, offset, mask, weight_2d, *cols = ctx.saved_tensors
        weight_shape, stride, padding, dilation, in_dtypes = ctx.geometry
        sampler = _Sampler(x, offset, mask, weight_shape[-2:], stride, padding, dilation)
        b, c, h, w = x.shape
        c_out, kc = weight_2d.shape
        grad = grad_out.to(weight_2d.dtype).permute(0, 2, 3, 1).contiguous()  # (B, Ho, Wo, C_out)
        need_sampling, need_weight = any(ctx.needs_input_grad[:3]) or sampler.tiles, ctx.needs_input_grad[3]
        if need_sampling:
            # One copy of the input gradient per thread; on tiles none when the threads can take whole images
            # (disjoint scatter targets), and the kernel zeroes it just ahead of the scatter.
            threads = torch.get_num_threads()
            copies = 1 if sampler.tiles and b % threads == 0 else threads
            gx = (torch.empty if sampler.tiles else torch.zeros)(copies, b, h, w, c, dtype=sampler.acc)
            goffset = torch.empty(b, sampler.ho, sampler.wo, sampler.k, 2, dtype=sampler.acc)
            gmask = torch.empty(b, sampler.ho, sampler.wo, sampler.k, dtype=sampler.acc)
        gbias = None
        if sampler.tiles:  # every gradient in one kernel call
            gweight, gbias = torch.empty(c_out, kc), torch.empty(c_out)
            sampler.backward_tiles(weight_2d, grad, gx, goffset, gmask, gweight, gbias)
        else:
            gcols = torch.empty(sampler.chunk_rows * sampler.wo, kc, dtype=weight_2d.dtype) if need_sampling else None
            gweight = torch.zeros(c_out, kc, dtype=sampler.acc) if need_weight else None
            for (image, row, rows), chunk_cols in zip(sampler.chunks, cols):
                grad_chunk = grad[image, row:row + rows].view(rows * sampler.wo, c_out)
                if need_sampling:
                    chunk_gcols = gcols[:rows * sampler.wo]
                    torch.mm(grad_chunk, weight_2d, out=chunk_gcols)
                    sampler.col2im(chunk_gcols, image, row, rows, gx, goffset, gmask)
                if need_weight:
                    gweight += torch.mm(grad_chunk.t(), chunk_cols).to(sampler.acc)
        grads = [None] * 9
        if need_sampling:
            gx = gx.sum(0) if gx.shape[0] > 1 and not sampler.tiles else gx[0]
            goffset = goffset.view(b, sampler.ho, sampler.wo, 2 * sampler.k)
            grads[:3] = (t.permute(0, 3, 1, 2).to(dtype) for t, dtype in zip((gx, goffset, gmask), in_dtypes))
        if need_weight:
            kh, kw = weight_shape[-2:]
            grads[3] = gweight.view(c_out, kh, kw, c).permute(0, 3, 1, 2).to(in_dtypes[3])
        if in_dtypes[4] is not None and ctx.needs_input_grad[4]:
            grads[4] = (grad.sum((0, 1, 2), dtype=sampler.acc) if gbias is None else gbias).to(in_dtypes[4])
        return tuple(grads)


def deform_conv_fused(x, offset, mask, weight, bias, stride, padding, dilation):
    """Backend entry point (same signature as the other backends); the result is channels-last in memory.

    The computation runs in the input's dtype, or in bfloat16 inside a CPU ``torch.autocast`` region of that dtype.
    """
    if library() is None:
        raise RuntimeError('the fused CPU kernel is not available')
    compute_dtype = x.dtype
    if torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16:
        compute_dtype = torch.bfloat16
    with torch.autocast('cpu', enabled=False):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, offset, mask, weight, bias)):
            return _FusedDeformConv.apply(x, offset, mask, weight, bias, stride, padding, dilation, compute_dtype)
        x, offset, mask, weight_2d = _prepare(x, offset, mask, weight, compute_dtype)
        sampler = _Sampler(x, offset, mask, weight.shape[-2:], stride, padding, dilation, _INFERENCE_CHUNK_BYTES)
        if sampler.tiles:
            return sampler.forward_tiles(weight_2d, bias)
        return _forward(sampler, weight_2d, bias, keep_columns=False)[0]


if __name__ == '__main__':  # python -m sdnet_plugin.ops.fused_cpu: build ahead of time (make install does)
    try:
        print(f'fused CPU deformable convolution kernel: {build(verbose=True)}')
    except RuntimeError as error:
        print(f'fused CPU deformable convolution kernel not built ({error}); the pure-PyTorch backend will be used')
