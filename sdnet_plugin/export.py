"""``sdnet-export``: SDNet as an ONNX model for onnxruntime (or any ONNX runtime), or as a shipped weights file.

Examples::

    sdnet-export --format onnx -o sdnet.onnx                          # the shipped default weights
    sdnet-export --format onnx -o mine.onnx --weights experiments/NAME/models/net_g_latest.pth
    sdnet-export --format onnx -o fast.onnx --deform-op deformconv    # onnxruntime's DeformConv kernel (opset 19)
    sdnet-export --format weights -o weights/mine.pth --weights experiments/NAME/models/net_g_latest.pth

The ONNX model maps ``input`` ``(N, 3, H, W)`` float32 RGB in [0, 1] to ``output`` of the same shape, clipped to
[0, 1]; N, H and W are free (any size: the graph pads to the network's ``pad_multiple`` by edge replication, as the
network does, and crops back; the multiple is stored in the model's metadata). Deformable convolutions become either
the pure-PyTorch path (``GridSample`` + ``MatMul``, standard operators of every ONNX runtime) or ONNX's
``DeformConv`` (opset 19: only onnxruntime releases whose CPU provider implements it; faster there). The graph comes
from torch's TorchScript exporter (``dynamo=False``, seconds; docs/deblur.md says why not the torch.export-based
one). Before the file is written, onnxruntime runs it on a test input whose size needs padding and compares the
output with PyTorch's; nothing is written when they differ by more than 1e-3.
"""
import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdnet_plugin.file_safety import atomic_path
from sdnet_plugin.inference import (ELEMENTS_PER_PIXEL_PER_FEATURE, build_sdnet, export_weights, find_default_weights,
                                    load_weights, missing_weights_message)
from sdnet_plugin.utils import error_line, preset_names

__all__ = ['DEFORM_OPS', 'OnnxNetwork', 'OnnxWrapper', 'export_onnx', 'exportable_backends', 'main']

# --deform-op -> (DCN backend traced, default opset)
DEFORM_OPS = {'gridsample': ('torch', 18), 'deformconv': ('torchvision', 19)}
PARITY_TOLERANCE = 1e-3
ONNX_EXTRA_HINT = "pip install 'sdnet-plugin[onnx]' (onnx and onnxruntime)"


class OnnxWrapper(nn.Module):
    """What the ONNX graph computes: edge padding to the network's multiple, the network, crop, clip to [0, 1].

    Args:
        net (nn.Module): SDNet (any network with ``pad_multiple``) in float32.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.multiple = getattr(net, 'pad_multiple', 1)

    def forward(self, x):
        """
        Args:
            x (Tensor): ``(N, 3, H, W)`` float32 RGB in [0, 1].

        Returns:
            Tensor: ``(N, 3, H, W)`` restored image in [0, 1].
        """
        height, width = x.shape[-2:]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        out = self.net(F.pad(x, (0, pad_w, 0, pad_h), mode='replicate'))
        return out[..., :height, :width].clamp(0, 1)


@contextlib.contextmanager
def exportable_backends(net, backend='torch'):
    """Run every ``ModulatedDeformConv2d`` of ``net`` with ``backend`` inside the block, then restore them.

    The compiled backends are opaque to the exporter; ``'torch'`` (``grid_sample`` + matrix product) and
    ``'torchvision'`` (one ``torchvision::deform_conv2d`` op, translated to ``DeformConv``) can be exported.
    """
    from sdnet_plugin.ops import ModulatedDeformConv2d
    layers = [m for m in net.modules() if isinstance(m, ModulatedDeformConv2d)]
    saved = [layer.backend for layer in layers]
    for layer in layers:
        layer.backend = backend
    try:
        yield net
    finally:
        for layer, value in zip(layers, saved):
            layer.backend = value


def _register_deform_conv_symbolic():
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19) for the TorchScript exporter. Both share the
    offset layout: ``(dy, dx)`` pairs per kernel point in raster order."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args('v', 'v', 'v', 'v', 'v', 'i', 'i', 'i', 'i', 'i', 'i', 'i', 'i', 'b')
    def deform_conv2d(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                      groups, offset_groups, use_mask):
        return g.op('DeformConv', input, weight, offset, bias, mask, dilations_i=[dilation_h, dilation_w],
                    group_i=groups, offset_group_i=offset_groups, pads_i=[pad_h, pad_w, pad_h,
                                                                          pad_w], strides_i=[stride_h, stride_w])

    register_custom_op_symbolic('torchvision::deform_conv2d', deform_conv2d, 19)


def _require(*names):
    for name in names:
        try:
            __import__(name)
        except ImportError:
            raise RuntimeError(f'ONNX export needs {name}: {ONNX_EXTRA_HINT}') from None


def _test_input(size=(70, 54), seed=0):
    """A smooth random ``(1, 3, H, W)`` image."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size[0] // 8 + 2, size[1] // 8 + 2, generator=gen)
    return F.interpolate(coarse, size=size, mode='bicubic', align_corners=False).clamp(0, 1)


def _trace_to_file(wrapper, example, path, opset, deform_op):
    """Write the ONNX graph of ``wrapper`` (free N, H, W) to ``path`` with torch's TorchScript exporter."""
    if deform_op == 'deformconv':
        _register_deform_conv_symbolic()
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    with warnings.catch_warnings():
        # deprecation notice, and tracer notes on shape checks in Python: the parity check covers both
        warnings.simplefilter('ignore')
        dynamic_axes = {'input': axes, 'output': axes}
        torch.onnx.export(wrapper, (example, ), path, dynamo=False, input_names=['input'], output_names=['output'],
                          opset_version=opset, dynamic_axes=dynamic_axes)


def export_onnx(out_path, weights=None, preset='base', deform_op='gridsample', opset=None, check_size=(70, 54)):
    """Export SDNet to an ONNX file and check it with onnxruntime before writing it (atomically).

    Args:
        out_path (str | Path): The ``.onnx`` file.
        weights (str | Path | None): Weights file or BasicSR checkpoint. Default: the shipped weights.
        preset (str): SDNet preset when the weights do not record their network. Default: ``'base'``.
        deform_op (str): ``'gridsample'`` or ``'deformconv'``, see the module docstring. Default: ``'gridsample'``.
        opset (int | None): ONNX opset. Default: 18 (``gridsample``) or 19 (``deformconv``).
        check_size (tuple[int, int]): ``(H, W)`` of the parity check input. Default: ``(70, 54)``.

    Returns:
        dict: ``path``, ``bytes``, ``opset``, ``deform_op``, ``network_g``, ``max_abs_diff`` (onnxruntime vs PyTorch on
        the check input).
    """
    if deform_op not in DEFORM_OPS:
        raise ValueError(f'unknown deform op {deform_op!r}; choose one of {", ".join(DEFORM_OPS)}')
    _require('onnx', 'onnxruntime')
    import numpy as np
    import onnx
    backend, default_opset = DEFORM_OPS[deform_op]
    opset = opset or default_opset
    if deform_op == 'deformconv' and opset < 19:
        raise ValueError('DeformConv needs opset 19 or later')
    weights = Path(weights) if weights else find_default_weights()
    if weights is None:
        raise FileNotFoundError(missing_weights_message('sdnet-export'))
    state_dict, network_opt = load_weights(weights, preset)
    net = build_sdnet(network_opt, state_dict).float().to(memory_format=torch.contiguous_format)
    wrapper = OnnxWrapper(net).eval()
    # traced at a multiple of the padding (the padding amounts stay symbolic), checked at a size that needs padding
    trace_input, sample = _test_input((64, 96), seed=1), _test_input(check_size)
    # The grid_sample path processes bands of rows when autograd is off (a loop over the image height, which a
    # graph with a free height cannot hold); with gradients required it is one pass of fixed structure.
    for param in wrapper.parameters():
        param.requires_grad_(True)
    with torch.no_grad(), exportable_backends(net, backend):
        reference = wrapper(sample).numpy()

    with atomic_path(out_path) as tmp_path:  # renamed onto out_path only when the parity check passes
        with exportable_backends(net, backend), torch.enable_grad():
            _trace_to_file(wrapper, trace_input, tmp_path, opset, deform_op)
        model = onnx.load(tmp_path)
        metadata = {
            'network_g': json.dumps(network_opt),
            'weights': Path(weights).name,
            'deform_op': deform_op,
            'pad_multiple': str(wrapper.multiple),
            'input': 'N x 3 x H x W float32 RGB in [0, 1]'
        }
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, tmp_path)
        output = OnnxNetwork(tmp_path, threads=1).run(sample.numpy())
        max_abs_diff = float(np.abs(output - reference).max())
        if not max_abs_diff <= PARITY_TOLERANCE:
            raise RuntimeError(f'onnxruntime output differs from PyTorch by {max_abs_diff:.3g} (> '
                               f'{PARITY_TOLERANCE}); nothing written')
    return {
        'path': str(out_path),
        'bytes': os.path.getsize(out_path),
        'opset': opset,
        'deform_op': deform_op,
        'network_g': network_opt,
        'max_abs_diff': max_abs_diff
    }


class OnnxNetwork:
    """An exported model in onnxruntime, called like the PyTorch network: ``(N, 3, H, W)`` tensor -> tensor.

    Args:
        path (str | Path): The ``.onnx`` file written by :func:`export_onnx`.
        threads (int | None): onnxruntime's intra-op threads. Default: None (onnxruntime's default).
        device (str | torch.device): ``'cpu'``, or ``'cuda'`` when onnxruntime has its CUDA provider. Default: cpu.
    """

    def __init__(self, path, threads=None, device='cpu'):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError(f'running an ONNX model needs onnxruntime: {ONNX_EXTRA_HINT}') from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ['CPUExecutionProvider']
        if torch.device(device).type == 'cuda':
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise RuntimeError('this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)')
            providers.insert(0, 'CUDAExecutionProvider')
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f'cannot load ONNX model {path}: {str(error).strip().splitlines()[0]}') from None
        self.input_name = self.session.get_inputs()[0].name
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.network_opt = json.loads(metadata.get('network_g', '{}'))
        # tiles are cut on the padding multiple of the network, as for the PyTorch network (16 for ``light``)
        self.pad_multiple = int(metadata.get('pad_multiple', 1))
        self.metadata = metadata

    def feature_channels(self):
        from sdnet_plugin.archs import SDNET_PRESETS
        preset = SDNET_PRESETS.get(self.network_opt.get('preset', 'base'), SDNET_PRESETS['base'])
        return self.network_opt.get('num_feat') or preset['num_feat']

    def bytes_per_pixel(self):
        """Peak inference memory per input pixel: onnxruntime's CPU provider needs about what PyTorch does in float32
        (measured for the exported base preset at 512x512: 3.9 KB per pixel with GridSample, 2.8 KB with
        DeformConv; the estimate gives 4 KB)."""
        return ELEMENTS_PER_PIXEL_PER_FEATURE * 4 * self.feature_channels()

    def run(self, array):
        """``(N, 3, H, W)`` float32 ndarray -> restored ndarray."""
        return self.session.run(None, {self.input_name: array})[0]

    def __call__(self, x):
        return torch.from_numpy(self.run(x.detach().cpu().float().contiguous().numpy()))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='sdnet-export', description='Export SDNet to ONNX or a weights file.')
    parser.add_argument(
        '--format', default='onnx', choices=('onnx', 'weights'),
        help='onnx: an ONNX model; weights: a float16 weights file from a training checkpoint '
        '(default: onnx)')
    parser.add_argument('-o', '--output', required=True, help='file to write')
    parser.add_argument(
        '--weights', default=None,
        help='weights file or BasicSR checkpoint (default: the shipped weights; required for '
        '--format weights)')
    parser.add_argument('--preset', default='base', choices=preset_names(),
                        help='SDNet preset, used only when the weights do not record their network (default: base)')
    parser.add_argument(
        '--deform-op', default='gridsample', choices=tuple(DEFORM_OPS),
        help='gridsample: any runtime with GridSample (opset 16+); deformconv: ONNX DeformConv '
        '(opset 19), for onnxruntime releases that implement it (default: gridsample)')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: 18, or 19 for deformconv)')
    args = parser.parse_args(argv)
    if args.format == 'weights' and not args.weights:
        parser.error('--format weights converts a training checkpoint: give --weights CHECKPOINT')
    return args


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 2 error)."""
    args = parse_args(argv)
    import sdnet_plugin  # noqa: F401  (BasicSR fixes and registries)
    try:
        if args.weights and os.path.exists(args.output) and os.path.samefile(args.output, args.weights):
            raise ValueError(f'{args.output} is the checkpoint itself; write the {args.format} file under another name')
        if args.format == 'weights':
            size = export_weights(args.weights, args.output, args.preset)
            print(f'sdnet-export: wrote {args.output} ({size / 2**20:.1f} MiB, float16)')
            return 0
        print(f'sdnet-export: exporting {args.weights or "the shipped weights"} to ONNX ...', file=sys.stderr)
        info = export_onnx(args.output, args.weights, args.preset, args.deform_op, args.opset)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        message = error_line(error)
        print(message if message.startswith('sdnet-export:') else f'sdnet-export: error: {message}', file=sys.stderr)
        return 2
    network = info['network_g']
    print(f'sdnet-export: wrote {info["path"]} ({info["bytes"] / 2**20:.1f} MiB, {network.get("type")} '
          f'{network.get("preset", "")}, float32, {info["deform_op"]}, opset {info["opset"]}); onnxruntime vs '
          f'PyTorch: max abs difference {info["max_abs_diff"]:.2g}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
