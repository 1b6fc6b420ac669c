"""Modulated deformable convolution (DCNv2) with interchangeable backends.

Layout (shared by torchvision and mmcv): ``offset`` is ``(B, 2K, Ho, Wo)`` with an interleaved ``(dy, dx)`` pair per
kernel point, kernel points in raster order; ``mask`` is ``(B, K, Ho, Wo)``; samples outside the input are zero.

Backends:

* ``'mmcv'``: mmcv's compiled op, when ``mmcv.ops`` imports with its extension.
* ``'torchvision'``: :func:`torchvision.ops.deform_conv2d`.
* ``'torch'``: pure PyTorch (one ``grid_sample`` of all K sampling points, then one batched matrix product; bands
  of rows without autograd). Differentiable, works on every device and dtype, and exports to ONNX.
* ``'fused'``: CPU only (float32, float64, bfloat16): a small C++/OpenMP kernel samples channels-last columns and
  torch contracts them with the weights, or, in bfloat16 on CPUs with AMX, the kernel runs the matrix products
  itself on AMX tiles (:mod:`sdnet_plugin.ops.fused_cpu`); built on first use when a C++ compiler is present.

Under a CPU ``torch.autocast`` region of bfloat16, the ``'fused'`` backend computes in bfloat16 (AMX matrix
products) and ``'auto'`` times the backends in bfloat16.

``'auto'`` times every available backend once per (device, dtype, training or inference) on a representative layer
and keeps the fastest. ``SDNET_DCN_BACKEND`` in the environment overrides the choice.
"""
import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

BACKENDS = ('mmcv', 'torchvision', 'torch', 'fused')
_auto_choice = {}


@functools.lru_cache(maxsize=None)
def _mmcv_op():
    try:
        from mmcv.ops import modulated_deform_conv2d as op
        from mmcv.utils import ext_loader
        ext_loader.load_ext('_ext', ['modulated_deform_conv_forward'])
    except Exception:  # ImportError, or mmcv installed without its compiled extension
        return None
    return op


@functools.lru_cache(maxsize=None)
def _available_backends():
    names = []
    if _mmcv_op() is not None:
        names.append('mmcv')
    try:
        import torchvision.ops  # noqa: F401
        names.append('torchvision')
    except Exception:
        pass
    names.append('torch')
    from sdnet_plugin.ops import fused_cpu
    if fused_cpu.is_available():
        names.append('fused')
    return tuple(names)


def available_backends():
    """Backends that can run here, in order of preference when timings tie (probed once per process)."""
    return list(_available_backends())


# Inference processes the output in bands of rows whose sampled columns hold about this many elements: peak memory
# stays flat at any image size. On the CPU small bands also let the allocator reuse their buffers instead of
# page-faulting fresh gigabyte-sized ones (about 2.5x faster at 1280x720); on GPUs (caching allocator, launch
# overhead) bands are large.
_INFERENCE_BAND_ELEMENTS = 1 << 22
_INFERENCE_BAND_ELEMENTS_GPU = 1 << 26


def _sample_columns(x, offset, kernel_size, stride, padding, dilation, first_row=0):
    """Bilinear samples of ``x`` at every kernel point of output rows ``first_row ...``: ``(B, C, K, Ho', Wo)``."""
    b, c, h, w = x.shape
    kh, kw = kernel_size
    k = kh * kw
    ho, wo = offset.shape[-2:]
    # Sampling positions need float32 at least: a float16 grid_sample grid is off by up to 0.16 px at 1280 px wide
    # (and CPU float16 grid_sample returns NaNs); only the K-times larger columns go back to the input dtype.
    dtype = torch.promote_types(x.dtype, torch.float32)
    # Regular grid of each output pixel's kernel points in input coordinates, plus the offsets: (B, K, Ho', Wo).
    base_y = torch.arange(first_row, first_row + ho, device=x.device, dtype=dtype) * stride[0] - padding[0]
    base_x = torch.arange(wo, device=x.device, dtype=dtype) * stride[1] - padding[1]
    ky = (torch.arange(kh, device=x.device, dtype=dtype) * dilation[0]).repeat_interleave(kw)
    kx = (torch.arange(kw, device=x.device, dtype=dtype) * dilation[1]).repeat(kh)
    off = offset.view(b, k, 2, ho, wo).to(dtype)
    py = base_y.view(1, 1, ho, 1) + ky.view(1, k, 1, 1) + off[:, :, 0]
    px = base_x.view(1, 1, 1, wo) + kx.view(1, k, 1, 1) + off[:, :, 1]
    # Pixel centre i sits at (2i + 1) / size - 1 with align_corners=False (valid for any size, including 1), and
    # grid_sample's zero padding weights every corner outside the input by zero: exactly DCN's bilinear rule.
    gx = px * (2.0 / w) + (1.0 / w - 1.0)
    gy = py * (2.0 / h) + (1.0 / h - 1.0)
    grid = torch.stack((gx, gy), dim=-1).view(b, k * ho, wo, 2)
    cols = F.grid_sample(x.to(dtype), grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    return cols.view(b, c, k, ho, wo).to(x.dtype)


def _deform_conv_torch(x, offset, mask, weight, bias, stride, padding, dilation):
    b, c, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f'weight expects {c_in} input channels, input has {c}')
    k = kh * kw
    ho, wo = offset.shape[-2:]
    # bmm with the weight broadcast over the batch keeps the columns in place (matmul would copy them transposed).
    weight_2d = weight.reshape(1, c_out, c * k).expand(b, c_out, c * k)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, offset, mask, weight))
    if needs_grad:
        cols = _sample_columns(x, offset, (kh, kw), stride, padding, dilation) * mask.view(b, 1, k, ho, wo)
        out = torch.bmm(weight_2d, cols.view(b, c * k, ho * wo)).view(b, c_out, ho, wo)
    else:
        out = x.new_empty(b, c_out, ho, wo)
        budget = _INFERENCE_BAND_ELEMENTS if x.device.type == 'cpu' else _INFERENCE_BAND_ELEMENTS_GPU
        band = max(1, budget // (b * c * k * wo))
        for row in range(0, ho, band):
            rows = min(band, ho - row)
            cols = _sample_columns(x, offset[:, :, row:row + rows], (kh, kw), stride, padding, dilation, row)
            cols.mul_(mask[:, :, row:row + rows].view(b, 1, k, rows, wo))
            out[:, :, row:row + rows] = torch.bmm(weight_2d, cols.view(b, c * k, rows * wo)).view(b, c_out, rows, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _deform_conv_torchvision(x, offset, mask, weight, bias, stride, padding, dilation):
    from torchvision.ops import deform_conv2d
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def _deform_conv_mmcv(x, offset, mask, weight, bias, stride, padding, dilation):
    return _mmcv_op()(x, offset, mask, weight, bias, stride, padding, dilation, 1, 1)


def _deform_conv_fused(x, offset, mask, weight, bias, stride, padding, dilation):
    from sdnet_plugin.ops.fused_cpu import deform_conv_fused
    return deform_conv_fused(x, offset, mask, weight, bias, stride, padding, dilation)


_IMPLS = {
    'torch': _deform_conv_torch,
    'torchvision': _deform_conv_torchvision,
    'mmcv': _deform_conv_mmcv,
    'fused': _deform_conv_fused
}


def _autocast_dtype(device_type, dtype):
    """The dtype a convolution computes in: the autocast dtype inside an autocast region of the device, else
    ``dtype``."""
    if device_type in ('cpu', 'cuda') and torch.is_autocast_enabled(device_type) and dtype.is_floating_point:
        return torch.get_autocast_dtype(device_type)
    return dtype


def _time_backends(names, device, dtype, backward, rounds=4):
    """Seconds per call of each backend on a 32->32 3x3 layer over a 2x32x64x64 map.

    With ``backward`` a call is forward + backward (training), otherwise a forward without autograd (inference).
    Backends take turns and each keeps its fastest round after a warm-up round, so load from other processes
    penalises all of them alike. A backend that fails (e.g. no kernel for this dtype or device) is left out.
    """
    gen = torch.Generator().manual_seed(0)
    tensors = (torch.randn(2, 32, 64, 64, generator=gen), torch.randn(2, 18, 64, 64, generator=gen),
               torch.rand(2, 9, 64, 64, generator=gen), torch.randn(32, 32, 3, 3, generator=gen))
    tensors = [t.to(device, dtype).requires_grad_(backward) for t in tensors]
    best = {name: float('inf') for name in names}
    with torch.enable_grad() if backward else torch.no_grad():
        for round_index in range(rounds + 1):
            for name in list(best):
                try:
                    if device.type == 'cuda':
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    out = _IMPLS[name](*tensors, None, (1, 1), (1, 1), (1, 1))
                    if backward:
                        out.sum().backward()
                    if device.type == 'cuda':
                        torch.cuda.synchronize(device)
                except Exception:
                    del best[name]
                    continue
                if round_index:  # round 0 warms up kernels and caches
                    best[name] = min(best[name], time.perf_counter() - start)
    return best


def select_backend(device, dtype=torch.float32, backward=None):
    """The backend ``'auto'`` resolves to (measured once per setting, then cached).

    Args:
        device (torch.device | str): Device of the tensors.
        dtype (torch.dtype): Their dtype. Default: ``torch.float32``.
        backward (bool | None): Time forward + backward (training) or forward only (inference). Default: None
            (training when autograd is enabled).

    Returns:
        str: The fastest backend that ran; ``'torch'`` when no other one did.
    """
    forced = os.environ.get('SDNET_DCN_BACKEND')
    if forced:
        if forced not in available_backends():
            raise RuntimeError(f'SDNET_DCN_BACKEND={forced!r} is not available here ({available_backends()})')
        return forced
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    if backward is None:
        backward = torch.is_grad_enabled()  # False under no_grad and inference_mode
    # Backends rank differently for training and inference (backward kernels dominate training), and per GPU model.
    key = (str(device), dtype, bool(backward))
    if key not in _auto_choice:
        with torch.inference_mode(False):
            timings = _time_backends(available_backends(), device, dtype, backward)
        _auto_choice[key] = min(timings, key=timings.get) if timings else 'torch'
    return _auto_choice[key]


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1, backend='auto'):
    """Modulated deformable 2D convolution (DCNv2).

    Args:
        input (Tensor): ``(B, C_in, H, W)``.
        offset (Tensor): ``(B, 2K, Ho, Wo)``, interleaved ``(dy, dx)`` per kernel point in raster order.
        mask (Tensor): ``(B, K, Ho, Wo)`` modulation scalars.
        weight (Tensor): ``(C_out, C_in, kh, kw)``, K = kh * kw.
        bias (Tensor, optional): ``(C_out,)``. Default: None.
        stride, padding, dilation (int | tuple[int, int]): as for ``conv2d``. Default: 1, 0, 1.
        backend (str): ``'auto'``, ``'mmcv'``, ``'torchvision'`` or ``'torch'``. Default: ``'auto'``.

    Returns:
        Tensor: ``(B, C_out, Ho, Wo)``.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[-2:]
    k = kh * kw
    b, _, h, w = input.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if offset.shape != (b, 2 * k, ho, wo):
        raise ValueError(f'offset must have shape {(b, 2 * k, ho, wo)}, got {tuple(offset.shape)}')
    if mask.shape != (b, k, ho, wo):
        raise ValueError(f'mask must have shape {(b, k, ho, wo)}, got {tuple(mask.shape)}')
    if backend == 'auto':
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input, offset, mask, weight, bias))
        backend = select_backend(input.device, _autocast_dtype(input.device.type, input.dtype), backward=training)
    elif backend not in _IMPLS:
        raise ValueError(f'unknown backend {backend!r}; choose from auto, {", ".join(BACKENDS)}')
    elif backend not in available_backends():
        raise RuntimeError(f'backend {backend!r} is not available here ({available_backends()})')
    return _IMPLS[backend](input, offset, mask, weight, bias, stride, padding, dilation)


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution whose offsets and masks are predicted from conditioning features.

    A small head (``conv3x3 -> LeakyReLU -> conv3x3``) maps the conditioning features (the input itself by
    default) to ``2K`` offsets and ``K`` mask logits per pixel. The head's last layer starts at zero, so the layer
    starts as a plain convolution (every kernel point on its grid position, masks at 0.5). Offsets are not
    clamped: sampling points may reach as far as the blur does.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Deformable kernel size. Default: 3.
        stride (int): Default: 1.
        padding (int | None): Default: ``dilation * (kernel_size - 1) // 2`` (same size).
        dilation (int): Default: 1.
        bias (bool): Default: True.
        cond_channels (int | None): Channels of the conditioning features. Default: ``in_channels``.
        hidden_channels (int | None): Width of the offset head. Default: ``in_channels``.
        backend (str): DCN backend, see :func:`modulated_deform_conv2d`. Default: ``'auto'``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, dilation=1, bias=True,
                 cond_channels=None, hidden_channels=None, backend='auto'):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.backend = backend
        num_points = kernel_size * kernel_size
        cond_channels = cond_channels or in_channels
        hidden_channels = hidden_channels or in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cond_channels, hidden_channels, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(hidden_channels, 3 * num_points, 3, stride, 1))
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x, cond=None):
        """
        Args:
            x (Tensor): ``(B, C_in, H, W)`` features to convolve.
            cond (Tensor, optional): ``(B, C_cond, H, W)`` features the offsets are predicted from. Default: ``x``.

        Returns:
            tuple[Tensor, Tensor, Tensor]: output ``(B, C_out, Ho, Wo)``, offset ``(B, 2K, Ho, Wo)`` and mask
            ``(B, K, Ho, Wo)``.
        """
        head = self.conv_offset(x if cond is None else cond)
        num_points = self.kernel_size * self.kernel_size
        offset, mask_logits = head.split((2 * num_points, num_points), dim=1)
        mask = torch.sigmoid(mask_logits)
        out = modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                      backend=self.backend)
        return out, offset, mask

    def extra_repr(self):
        return (f'{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}, backend={self.backend}')
