"""Every DCNv2 backend against an independent float64 reference (per-point bilinear sampling by explicit gathers)."""
import pytest
import torch
import torch.nn.functional as F

from sdnet_plugin.ops import BACKENDS, ModulatedDeformConv2d, available_backends
from sdnet_plugin.ops import modulated_deform_conv as mdc
from sdnet_plugin.ops import modulated_deform_conv2d, select_backend

AVAILABLE = available_backends()
CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs CUDA')

DEVICES = ['cpu', pytest.param('cuda', marks=requires_cuda)]
BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in AVAILABLE, reason=f'{name} not available'))
    for name in BACKENDS
]
# (stride, padding, dilation, kernel_size, offset scale): the last configuration sends most samples far outside.
CONFIGS = {
    'plain': (1, 1, 1, 3, 1.5),
    'stride2': (2, 1, 1, 3, 1.5),
    'dilation2': (1, 2, 2, 3, 1.5),
    'stride2_dilation2_nopad': (2, 0, 2, 3, 2.0),
    'kernel1x2_rect': (1, 0, 1, (1, 2), 1.5),
    'outside': (1, 1, 1, 3, 12.0),
}


def reference_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation):
    """DCNv2 by definition, in float64: each output pixel sums, over kernel points, the mask times the bilinear sample
    at grid position + offset, where each of the four neighbouring pixels outside the input contributes zero."""
    x, offset, mask, weight = (t.double() for t in (x, offset, mask, weight))
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    out = x.new_zeros(b, c_out, ho, wo)
    oy = torch.arange(ho, dtype=torch.float64, device=x.device).view(ho, 1) * stride
    ox = torch.arange(wo, dtype=torch.float64, device=x.device).view(1, wo) * stride
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    for i in range(kh):
        for j in range(kw):
            point = i * kw + j
            py = oy - padding + i * dilation + offset[:, 2 * point]  # (B, Ho, Wo)
            px = ox - padding + j * dilation + offset[:, 2 * point + 1]
            y0, x0 = torch.floor(py), torch.floor(px)
            sample = x.new_zeros(b, ho, wo, c)
            for yi in (y0, y0 + 1):
                for xi in (x0, x0 + 1):
                    corner_weight = (1 - (py - yi).abs()) * (1 - (px - xi).abs())
                    inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
                    yc = yi.clamp(0, h - 1).long()
                    xc = xi.clamp(0, w - 1).long()
                    values = x.permute(0, 2, 3, 1)[batch, yc, xc]  # (B, Ho, Wo, C)
                    sample = sample + (corner_weight * inside)[..., None] * values
            sample = sample * mask[:, point, :, :, None]
            out = out + torch.einsum('bhwc,oc->bohw', sample, weight[:, :, i, j])
    if bias is not None:
        out = out + bias.double().view(1, -1, 1, 1)
    return out


def make_inputs(config, dtype=torch.float64, device='cpu', seed=0, batch=2, c_in=3, c_out=4, h=7, w=9):
    stride, padding, dilation, kernel_size, offset_scale = CONFIGS[config]
    kh, kw = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(
        input=torch.randn(batch, c_in, h, w, generator=gen),
        offset=torch.randn(batch, 2 * kh * kw, ho, wo, generator=gen) * offset_scale,
        mask=torch.rand(batch, kh * kw, ho, wo, generator=gen),
        weight=torch.randn(c_out, c_in, kh, kw, generator=gen),
        bias=torch.randn(c_out, generator=gen),
    )
    tensors = {k: v.to(device, dtype).requires_grad_() for k, v in tensors.items()}
    return tensors, dict(stride=stride, padding=padding, dilation=dilation)


def forward_and_grads(fn, tensors, geometry, upstream):
    out = fn(tensors['input'], tensors['offset'], tensors['mask'], tensors['weight'], tensors['bias'], **geometry)
    grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), list(tensors.values()))
    return out, dict(zip(tensors, grads))


def test_reference_is_conv2d_at_zero_offsets():
    """The reference itself must be right for the comparisons below to mean anything."""
    tensors, geometry = make_inputs('dilation2')
    offset = torch.zeros_like(tensors['offset'])
    mask = torch.ones_like(tensors['mask'])
    out = reference_deform_conv(tensors['input'], offset, mask, tensors['weight'], tensors['bias'], **geometry)
    expected = F.conv2d(tensors['input'], tensors['weight'], tensors['bias'], **geometry)
    torch.testing.assert_close(out, expected)


def test_reference_bilinear_by_hand():
    """Single pixel, single channel: a sample half-way between two pixels averages them; one outside is zero."""
    x = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    offset = torch.tensor([[[[0.0, 0.0]], [[0.5, 1.0]]]], dtype=torch.float64)  # (dy, dx) per output pixel
    out = reference_deform_conv(x, offset, mask, weight, None, 1, 0, 1)
    # pixel 0 samples x=0.5 -> 2; pixel 1 samples (y=0, x=2), right of the image -> 0
    torch.testing.assert_close(out, torch.tensor([[[[2.0, 0.0]]]], dtype=torch.float64))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('config', list(CONFIGS))
@pytest.mark.parametrize('backend', BACKEND_PARAMS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_backend_matches_reference(backend, config, device, dtype):
    tensors, geometry = make_inputs(config, dtype=dtype, device=device)
    upstream = torch.randn(
        make_inputs(config)[0]['offset'].shape[0], 4, *tensors['offset'].shape[-2:],
        generator=torch.Generator().manual_seed(1)).to(device)
    ref_tensors = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    expected, expected_grads = forward_and_grads(reference_deform_conv, ref_tensors, geometry, upstream)

    def run(*args, **kwargs):
        return modulated_deform_conv2d(*args, backend=backend, **kwargs)

    out, grads = forward_and_grads(run, tensors, geometry, upstream)
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(out.double(), expected, **tol)
    for name in tensors:
        torch.testing.assert_close(grads[name].double(), expected_grads[name], **tol, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('backend', BACKEND_PARAMS)
@pytest.mark.parametrize('config', ['plain', 'stride2', 'dilation2', 'stride2_dilation2_nopad'])
def test_zero_offsets_unit_mask_equal_conv2d(backend, config, device):
    tensors, geometry = make_inputs(config, dtype=torch.float32, device=device, seed=3)
    x, weight, bias = tensors['input'].detach(), tensors['weight'].detach(), tensors['bias'].detach()
    out = modulated_deform_conv2d(x, torch.zeros_like(tensors['offset']), torch.ones_like(tensors['mask']), weight,
                                  bias, backend=backend, **geometry)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, **geometry), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('backend', BACKEND_PARAMS)
@pytest.mark.parametrize('shift', [(2, -1), (-3, 4), (0, 9)])
def test_integer_offsets_equal_shifted_conv(backend, shift, device):
    """Offsetting every kernel point by (dy, dx) convolves the image shifted by (-dy, -dx), zeros filling in."""
    dy, dx = shift
    tensors, geometry = make_inputs('plain', dtype=torch.float32, device=device, seed=4)
    x, weight = tensors['input'].detach(), tensors['weight'].detach()
    offset = torch.zeros_like(tensors['offset'])
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    out = modulated_deform_conv2d(x, offset, torch.ones_like(tensors['mask']), weight, backend=backend, **geometry)
    h, w = x.shape[-2:]
    pad = geometry['padding']
    margin = pad + max(abs(dy), abs(dx))
    padded = F.pad(x, (margin, margin, margin, margin))
    top, left = margin - pad + dy, margin - pad + dx
    window = padded[..., top:top + h + 2 * pad, left:left + w + 2 * pad]  # window[y, x] = x[y - pad + dy, x - pad + dx]
    expected = F.conv2d(window, weight, stride=geometry['stride'], dilation=geometry['dilation'])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', BACKEND_PARAMS)
@pytest.mark.parametrize('size', [(1, 1), (1, 6), (5, 1)])
def test_single_row_and_column_inputs(backend, size):
    """Maps one pixel wide occur at the coarsest level of small images."""
    tensors, geometry = make_inputs('plain', h=size[0], w=size[1], seed=5)
    args = [tensors[k].detach() for k in ('input', 'offset', 'mask', 'weight', 'bias')]
    torch.testing.assert_close(
        modulated_deform_conv2d(*args, backend=backend, **geometry), reference_deform_conv(*args, **geometry))


def test_auto_picks_an_available_backend_and_caches_it(monkeypatch):
    monkeypatch.delenv('SDNET_DCN_BACKEND', raising=False)
    monkeypatch.setattr(mdc, '_auto_choice', {})
    timed = []
    real_time_backends = mdc._time_backends

    def counting_time_backends(names, *args, **kwargs):
        timed.append(list(names))
        return real_time_backends(names, *args, **kwargs)

    monkeypatch.setattr(mdc, '_time_backends', counting_time_backends)
    chosen = select_backend('cpu', torch.float32, backward=False)
    assert chosen in AVAILABLE
    assert timed == [AVAILABLE]
    assert select_backend('cpu', torch.float32, backward=False) == chosen
    with torch.no_grad():  # inference without autograd resolves through the same cache entry
        tensors, geometry = make_inputs('plain', dtype=torch.float32)
        modulated_deform_conv2d(*(tensors[k] for k in ('input', 'offset', 'mask', 'weight', 'bias')), **geometry)
    assert len(timed) == 1  # cached: no second measurement
    assert set(mdc._auto_choice) == {('cpu', torch.float32, False)}


def test_backend_timing_measures_every_backend_that_runs(monkeypatch):
    monkeypatch.setitem(mdc._IMPLS, 'broken', lambda *args: 1 / 0)
    for backward in (False, True):
        timings = mdc._time_backends(AVAILABLE + ['broken'], torch.device('cpu'), torch.float32, backward, rounds=1)
        assert set(timings) == set(AVAILABLE) and all(0 < t < 60 for t in timings.values())


def test_auto_keys_training_and_inference_apart_and_falls_back_to_torch(monkeypatch):
    monkeypatch.delenv('SDNET_DCN_BACKEND', raising=False)
    monkeypatch.setattr(mdc, '_auto_choice', {})
    modes = []

    def failing_time_backends(names, device, dtype, backward):
        modes.append(backward)
        return {}  # nothing ran

    monkeypatch.setattr(mdc, '_time_backends', failing_time_backends)
    assert select_backend('cpu', torch.float64) == 'torch'  # autograd on: timed as training
    with torch.inference_mode():
        assert select_backend('cpu', torch.float64) == 'torch'
    assert modes == [True, False]
    assert set(mdc._auto_choice) == {('cpu', torch.float64, True), ('cpu', torch.float64, False)}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('config', ['plain', 'stride2_dilation2_nopad', 'outside'])
def test_torch_backend_inference_in_bands_matches_reference(monkeypatch, config, device):
    """Without autograd the pure-torch backend works through bands of output rows; a band may be a single row."""
    monkeypatch.setattr(mdc, '_INFERENCE_BAND_ELEMENTS', 1)
    monkeypatch.setattr(mdc, '_INFERENCE_BAND_ELEMENTS_GPU', 1)
    tensors, geometry = make_inputs(config, dtype=torch.float64, seed=6, device=device)
    args = [tensors[k].detach() for k in ('input', 'offset', 'mask', 'weight', 'bias')]
    with torch.inference_mode():
        out = modulated_deform_conv2d(*args, backend='torch', **geometry)
    assert out.device.type == device
    torch.testing.assert_close(out, reference_deform_conv(*args, **geometry))


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv('SDNET_DCN_BACKEND', 'torch')
    assert select_backend('cpu') == 'torch'
    monkeypatch.setenv('SDNET_DCN_BACKEND', 'nonexistent')
    with pytest.raises(RuntimeError, match='not available'):
        select_backend('cpu')


def test_bad_arguments_raise_clear_errors():
    tensors, geometry = make_inputs('plain')
    args = {k: v.detach() for k, v in tensors.items()}
    with pytest.raises(ValueError, match='offset must have shape'):
        modulated_deform_conv2d(args['input'], args['offset'][:, :4], args['mask'], args['weight'], **geometry)
    with pytest.raises(ValueError, match='mask must have shape'):
        modulated_deform_conv2d(args['input'], args['offset'], args['mask'][:, :1], args['weight'], **geometry)
    with pytest.raises(ValueError, match='unknown backend'):
        modulated_deform_conv2d(args['input'], args['offset'], args['mask'], args['weight'], backend='cudnn',
                                **geometry)


@pytest.mark.parametrize('device', DEVICES)
def test_module_starts_as_plain_convolution(device):
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 5, kernel_size=3, stride=2, dilation=2, backend='torch').to(device)
    x = torch.randn(2, 4, 11, 8, device=device)
    out, offset, mask = layer(x)
    assert offset.shape == (2, 18, 6, 4) and mask.shape == (2, 9, 6, 4)
    assert torch.all(offset == 0) and torch.all(mask == 0.5)
    expected = F.conv2d(x, layer.weight, None, stride=2, padding=2, dilation=2) * 0.5 + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_module_offsets_come_from_cond_features():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(3, 3, cond_channels=2, backend='torch')
    torch.nn.init.normal_(layer.conv_offset[-1].weight)
    x, cond = torch.randn(1, 3, 6, 6), torch.randn(1, 2, 6, 6)
    out, offset, _ = layer(x, cond)
    _, offset_again, _ = layer(torch.zeros_like(x), cond)
    torch.testing.assert_close(offset, offset_again)
    out.sum().backward()
    assert layer.conv_offset[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype, mean_tol', [(torch.float16, 3e-4), (torch.bfloat16, 2.5e-3)])
def test_torch_backend_samples_low_precision_inputs_at_float32_positions(device, dtype, mean_tol):
    """Half-precision sampling positions would be off by a sizeable fraction of a pixel on a 1280-wide map; the
    error must stay at the level of rounding the inputs."""
    gen = torch.Generator().manual_seed(7)
    h, w = 4, 1280
    x = torch.rand(1, 4, h, w, generator=gen)
    offset = torch.randn(1, 18, h, w, generator=gen) * 3
    mask = torch.rand(1, 9, h, w, generator=gen)
    weight = torch.randn(4, 4, 3, 3, generator=gen) / 6
    expected = reference_deform_conv(x, offset, mask, weight, None, 1, 1, 1)
    for grad in (False, True):
        args = [t.to(device, dtype).requires_grad_(grad) for t in (x, offset, mask, weight)]
        out = modulated_deform_conv2d(*args, padding=1, backend='torch')
        assert out.dtype == dtype
        error = (out.double().cpu() - expected).abs()
        assert error.mean() < mean_tol and error.max() < 40 * mean_tol


requires_fused = pytest.mark.skipif('fused' not in AVAILABLE, reason='fused CPU kernel not available (no compiler)')
# bfloat16 keeps 8 significant bits: inputs, columns and products are each rounded to about 0.4 % of their size, so
# outputs and gradients are compared with a tolerance relative to their overall scale (measured: at most 0.5 %).
BF16_RELATIVE = 0.01


def _relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


@requires_fused
@pytest.mark.parametrize('config', list(CONFIGS))
@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('tiles', [True, False])
def test_fused_bfloat16_matches_reference(config, autocast, tiles, monkeypatch):
    """bfloat16 inputs, or float32 inputs inside a CPU autocast region: forward and every gradient, on AMX tiles
    (where the processor has them) and with torch's matrix products."""
    from sdnet_plugin.ops import fused_cpu
    monkeypatch.setattr(fused_cpu, 'USE_TILES', tiles)
    tensors, geometry = make_inputs(config, dtype=torch.float32, c_in=16, c_out=8, h=12, w=10)
    with torch.no_grad():  # keep sampling positions off the kinks of bilinear interpolation (integer positions),
        offset = tensors['offset']  # where the derivative is one-sided, also after rounding to bfloat16
        offset.copy_(offset.floor() + 0.125 + 0.75 * (offset - offset.floor()))
    upstream = torch.randn(2, 8, *tensors['offset'].shape[-2:], generator=torch.Generator().manual_seed(1))
    ref_tensors = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    expected, expected_grads = forward_and_grads(reference_deform_conv, ref_tensors, geometry, upstream)
    if not autocast:  # the reference sees the same rounded inputs
        tensors = {k: v.detach().bfloat16().requires_grad_() for k, v in tensors.items()}
        ref_tensors = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
        expected, expected_grads = forward_and_grads(reference_deform_conv, ref_tensors, geometry, upstream)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out, grads = forward_and_grads(lambda *a, **k: modulated_deform_conv2d(*a, backend='fused', **k), tensors,
                                       geometry, upstream)
    assert out.dtype == torch.bfloat16
    assert _relative_error(out, expected) < BF16_RELATIVE
    for name, tensor in tensors.items():
        assert grads[name].dtype == tensor.dtype
        assert _relative_error(grads[name], expected_grads[name]) < BF16_RELATIVE, name


@requires_fused
@pytest.mark.parametrize('channels', [5, 32])
def test_fused_accepts_any_layout_and_returns_channels_last(channels, monkeypatch):
    """Strided offsets and masks (slices of one head output, as in the module), NCHW or channels-last inputs, one
    row per kernel call, the generic and the fixed channel-count code paths."""
    from sdnet_plugin.ops import fused_cpu
    monkeypatch.setattr(fused_cpu, '_CHUNK_BYTES', 1)
    monkeypatch.setattr(fused_cpu, '_INFERENCE_CHUNK_BYTES', 1)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, channels, 9, 11, generator=gen)
    head = torch.randn(2, 27, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    offset, mask = head[:, :18] * 2, torch.sigmoid(head[:, 18:])
    weight = torch.randn(4, channels, 3, 3, generator=gen)
    expected = reference_deform_conv(x, offset, mask, weight, None, 1, 1, 1)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            out = modulated_deform_conv2d(
                x.contiguous(memory_format=layout), offset, mask, weight, padding=1, backend='fused')
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@requires_fused
def test_fused_kernel_build_is_cached_and_reported(tmp_path, monkeypatch):
    from sdnet_plugin.ops import fused_cpu
    monkeypatch.setenv('SDNET_CACHE_DIR', str(tmp_path))
    path = fused_cpu.build()
    assert path.startswith(str(tmp_path)) and path.endswith('.so')
    mtime = tmp_path.stat().st_mtime_ns, (tmp_path / path.split('/')[-1]).stat().st_mtime_ns
    assert fused_cpu.build() == path and (tmp_path / path.split('/')[-1]).stat().st_mtime_ns == mtime[1]
    assert [p.name for p in tmp_path.iterdir()] == [path.split('/')[-1]]  # no temporary file left
    monkeypatch.setenv('CXX', '/nonexistent/compiler')
    monkeypatch.setenv('PATH', '/nonexistent')
    monkeypatch.setenv('SDNET_CACHE_DIR', str(tmp_path / 'other'))
    with pytest.raises(RuntimeError, match='no C\\+\\+ compiler'):
        fused_cpu.build()


def test_fused_is_cpu_only():
    if not CUDA or 'fused' not in AVAILABLE:
        pytest.skip('needs CUDA and the fused kernel')
    tensors, geometry = make_inputs('plain', dtype=torch.float32, device='cuda')
    with pytest.raises(RuntimeError, match='CPU only'):
        modulated_deform_conv2d(*(tensors[k] for k in ('input', 'offset', 'mask', 'weight', 'bias')), backend='fused',
                                **geometry)


@pytest.mark.parametrize('backend', BACKEND_PARAMS)
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf'), 1e30])
def test_non_finite_or_huge_offsets_never_crash(backend, bad):
    """Diverged weights give non-finite offsets: the result may be NaN where they are used, but nothing is read
    outside the input and the other pixels are unaffected."""
    tensors, geometry = make_inputs('plain', dtype=torch.float32, seed=9)
    args = {k: v.detach() for k, v in tensors.items()}
    args['offset'][0, :, 2, 3] = bad
    with torch.no_grad():
        out = modulated_deform_conv2d(args['input'], args['offset'], args['mask'], args['weight'], args['bias'],
                                      backend=backend, **geometry)
        clean = args['offset'].clone()
        clean[0, :, 2, 3] = 0
        reference = modulated_deform_conv2d(args['input'], clean, args['mask'], args['weight'], args['bias'],
                                            backend=backend, **geometry)
    assert out.shape == reference.shape
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[0, :, 2, 3] = False
    torch.testing.assert_close(out[keep], reference[keep])


@requires_fused
@pytest.mark.parametrize('bias', [True, False])
def test_fused_output_can_be_modified_in_place(bias):
    """The SVD module applies an in-place activation to the layer's output and trains through it."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 4, bias=bias, backend='fused')
    torch.nn.init.normal_(layer.conv_offset[-1].weight, std=0.1)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    out, _, _ = layer(x)
    torch.nn.functional.leaky_relu_(out, 0.1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and layer.weight.grad.abs().sum() > 0


@requires_fused
@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('channels, c_out, width, batch', [(32, 40, 37, 3), (16, 8, 16, 2), (64, 33, 5, 1),
                                                           (32, 32, 150, 2)])
def test_fused_tiles_match_reference(channels, c_out, width, batch, threads, monkeypatch):
    """The bfloat16 path on AMX tiles (matrix products inside the kernel, blocks of 16 and 32 pixels, weight gradient
    every 4 blocks): rows that end inside a block or span more than 4, output channels that fill part of a tile, one
    and two threads (whole images per thread when they divide the batch, else rows and per-thread input-gradient
    copies summed in the kernel)."""
    from sdnet_plugin.ops import fused_cpu
    if not fused_cpu.tiles_ready():
        pytest.skip('no AMX here')
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(batch, channels, 6, width, generator=gen)
    offset = torch.randn(batch, 18, 6, width, generator=gen) * 3
    offset = offset.floor() + 0.125 + 0.75 * (offset - offset.floor())  # off the kinks of bilinear interpolation
    tensors = dict(input=x, offset=offset, mask=torch.rand(batch, 9, 6, width, generator=gen),
                   weight=torch.randn(c_out, channels, 3, 3, generator=gen) / 10,
                   bias=torch.randn(c_out, generator=gen))
    tensors = {k: v.bfloat16().requires_grad_() for k, v in tensors.items()}
    upstream = torch.randn(batch, c_out, 6, width, generator=gen)
    ref_tensors = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    expected, expected_grads = forward_and_grads(reference_deform_conv, ref_tensors,
                                                 dict(stride=1, padding=1, dilation=1), upstream)
    calls = []
    monkeypatch.setattr(fused_cpu._Sampler, 'forward_tiles',
                        lambda self, *a, real=fused_cpu._Sampler.forward_tiles: calls.append(1) or real(self, *a))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, grads = forward_and_grads(lambda *a, **k: modulated_deform_conv2d(*a, backend='fused', **k), tensors,
                                       dict(stride=1, padding=1, dilation=1), upstream)
    finally:
        torch.set_num_threads(previous)
    assert calls and out.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(out, expected) < BF16_RELATIVE
    for name in tensors:
        assert _relative_error(grads[name], expected_grads[name]) < BF16_RELATIVE, name
