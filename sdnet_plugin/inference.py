"""Inference: loading SDNet weights, exporting shipped weights, and :class:`SDNetRestorer`, which runs a network on
images of any size (precision, device, blended tiles, offsets).

Weights files are BasicSR checkpoints: ``params`` and/or ``params_ema`` (preferred) state dicts, plus the network
options under ``network_g`` (``{'type': 'SDNet', 'preset': 'base', ...}``) so the architecture can be rebuilt.
"""
import io
import math
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from sdnet_plugin import precision
from sdnet_plugin.archs.sdnet_arch import pin_preset_version
from sdnet_plugin.file_safety import write_bytes
from sdnet_plugin.utils import error_line

__all__ = [
    'DEFAULT_WEIGHTS', 'DEFAULT_WEIGHTS_CANDIDATES', 'NonFiniteOutputError', 'SDNetRestorer', 'auto_tile_size',
    'build_sdnet', 'export_weights', 'find_default_weights', 'inference_copy', 'inference_dtype', 'load_network',
    'load_weights', 'missing_weights_message', 'shipped_weights', 'tiled_forward', 'weights_candidates'
]
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS_NAME = 'sdnet_base_synthetic.pth'
# Where shipped weights files are looked for by name, in order: inside the package, where a regular ``pip install .``
# copies every ``weights/*.pth`` of the checkout (setup.py), then the checkout's ``weights/`` (editable installs,
# scripts run from the repository).
WEIGHTS_FOLDERS = (Path(__file__).resolve().parent / 'weights', REPO_ROOT / 'weights')


def weights_candidates(name=DEFAULT_WEIGHTS_NAME):
    """Paths of the shipped weights file ``name`` in :data:`WEIGHTS_FOLDERS`, in lookup order."""
    return tuple(folder / name for folder in WEIGHTS_FOLDERS)


DEFAULT_WEIGHTS_CANDIDATES = weights_candidates()


def find_default_weights(candidates=None):
    """The first existing file of ``candidates`` (default: :data:`DEFAULT_WEIGHTS_CANDIDATES`), or None."""
    return next((path for path in candidates or DEFAULT_WEIGHTS_CANDIDATES if path.is_file()), None)


def missing_weights_message(prog):
    """One-line error of a command that found no shipped weights, naming the places it looked."""
    places = ', '.join(str(p) for p in DEFAULT_WEIGHTS_CANDIDATES)
    return (f'{prog}: error: the shipped default weights are missing (looked for {places}); pass --weights '
            'CHECKPOINT, or train and export them with scripts/train_default_weights.sh (see README)')


def shipped_weights(name=DEFAULT_WEIGHTS_NAME):
    """The shipped weights file ``name`` where the lookup finds it (:func:`weights_candidates`), else the path the
    checkout would hold it at."""
    candidates = weights_candidates(name)
    return find_default_weights(candidates) or candidates[-1]


DEFAULT_WEIGHTS = shipped_weights()
# Tile sides are multiples of the network's downsampling factor, so every tile sees the same stride-2/4 sampling
# phase as the whole image and tiled output matches untiled output.
TILE_ALIGN = 4
# Peak inference memory per input pixel and feature channel at full resolution, in elements (measured on CPU for
# the SDNet presets with the torchvision DCN backend: about 3.9 KB per pixel for 32 float32 channels).
ELEMENTS_PER_PIXEL_PER_FEATURE = 32
# Side of the image that checks that a network keeps the image size (restoration, not super-resolution).
PROBE_SIZE = 32


def _read_option_file_network(weights_path):
    """``network_g`` of the option file BasicSR copies into the experiment folder (``<exp>/models/net_g_*.pth``)."""
    experiment_dir = Path(weights_path).resolve().parent.parent
    for option_file in sorted(experiment_dir.glob('*.yml')):
        with open(option_file, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
        if isinstance(opt, dict) and isinstance(opt.get('network_g'), dict):
            return opt['network_g']
    return None


def load_weights(weights_path, preset='base'):
    """Read a weights file or BasicSR checkpoint.

    Args:
        weights_path (str | Path): ``.pth`` with ``params_ema`` / ``params`` (or a bare state dict).
        preset (str): SDNet preset assumed when neither the file (``network_g``) nor an option ``.yml`` in the
            experiment folder says which network it is. Default: ``'base'``.

    Returns:
        tuple[dict, dict]: the state dict (``params_ema`` preferred) and the network options, SDNet's with their
        ``preset_version`` (1 for files written before presets had versions).
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f'weights file {weights_path} does not exist')
    if weights_path.stat().st_size == 0:
        raise ValueError(f'weights file {weights_path} is empty (0 bytes)')
    try:
        checkpoint = torch.load(weights_path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise ValueError(f'cannot read weights {weights_path}: {error_line(error)}') from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f'weights {weights_path} hold a {type(checkpoint).__name__}, not a checkpoint dict')
    for key in ('params_ema', 'params'):
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    else:
        if not checkpoint or not all(torch.is_tensor(v) for v in checkpoint.values()):
            raise ValueError(f'weights {weights_path} have no params_ema / params state dict')
        state_dict = checkpoint
    state_dict = {(k[7:] if k.startswith('module.') else k): v for k, v in state_dict.items()}
    broken = [
        k for k, v in state_dict.items()
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if broken:
        raise ValueError(f'weights {weights_path} hold NaN or infinite values ({len(broken)} tensors, e.g. '
                         f'{broken[0]}): the training run diverged; use an earlier checkpoint')
    network_opt = checkpoint.get('network_g') or _read_option_file_network(weights_path)
    if not network_opt:
        network_opt = {'type': 'SDNet', 'preset': preset}
    return state_dict, pin_preset_version(network_opt)


def build_sdnet(network_opt, state_dict=None):
    """Build the network described by ``network_opt`` with BasicSR's registry and load ``state_dict`` (strict)."""
    from basicsr.archs import build_network
    from basicsr.utils import get_root_logger

    import sdnet_plugin  # noqa: F401  (registers SDNet)

    # build_network logs through BasicSR's logger; keep the console quiet for command-line use.
    get_root_logger().setLevel('WARNING')
    try:
        net = build_network(deepcopy(network_opt))
    except TypeError as error:  # an option the network does not take
        raise ValueError(f'cannot build the network {network_opt}: {error_line(error)}') from None
    if state_dict is not None:
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ValueError(f'weights do not fit {network_opt}: {error_line(error)}') from None
    return net.eval()


@torch.no_grad()
def check_keeps_size(net, network_opt, device='cpu', dtype=torch.float32):
    """Refuse a network whose output size differs from its input size (e.g. a super-resolution checkpoint)."""
    probe = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=device, dtype=dtype)
    try:
        shape = tuple(net(probe).shape)
    except RuntimeError as error:
        raise ValueError(f'{network_opt.get("type")} cannot restore an RGB image: {error_line(error)}') from None
    if shape[-2:] != probe.shape[-2:] or shape[1] != 3:
        raise ValueError(f'{network_opt.get("type")} turns a {PROBE_SIZE}x{PROBE_SIZE} RGB image into '
                         f'{shape[-1]}x{shape[-2]} with {shape[1]} channels: deblurring needs a network that keeps '
                         'size and channels (is it a super-resolution checkpoint?)')


def load_network(weights_path, device='cpu', half=False, preset='base'):
    """Load weights into a ready-to-run network (eval mode, no gradients).

    Args:
        weights_path (str | Path): Weights file or BasicSR checkpoint, see :func:`load_weights`.
        device (str | torch.device): Default: ``'cpu'``.
        half (bool): Convert to float16 (CUDA). Default: False.
        preset (str): Fallback SDNet preset, see :func:`load_weights`. Default: ``'base'``.

    Returns:
        tuple[nn.Module, dict]: the network and its options.
    """
    state_dict, network_opt = load_weights(weights_path, preset)
    net = build_sdnet(network_opt, state_dict).to(device)
    if half:
        net = net.half()
    for param in net.parameters():
        param.requires_grad_(False)
    check_keeps_size(net, network_opt, device, torch.float16 if half else torch.float32)
    return net, network_opt


def export_weights(checkpoint_path, out_path, preset='base'):
    """Turn a training checkpoint into a shipped weights file: float16 ``params`` (from ``params_ema`` when
    present) and ``network_g``. The architecture is rebuilt and loaded first, so a broken checkpoint is refused.

    Returns:
        int: Size of the written file in bytes.
    """
    if os.path.exists(out_path) and os.path.exists(checkpoint_path) and os.path.samefile(out_path, checkpoint_path):
        raise ValueError(f'{out_path} is the checkpoint itself; write the weights file under another name')
    state_dict, network_opt = load_weights(checkpoint_path, preset)
    build_sdnet(network_opt, state_dict)
    half_state = {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}
    buffer = io.BytesIO()
    torch.save({'params': half_state, 'network_g': network_opt}, buffer)
    write_bytes(out_path, buffer.getvalue())
    return buffer.tell()


def feature_channels(net):
    """Channels of the network's full-resolution features (drives the memory estimate)."""
    conv_first = getattr(net, 'conv_first', None)
    return conv_first.out_channels if conv_first is not None else 64


def available_memory(device):
    """Bytes that inference on ``device`` can use now (free GPU memory, or available RAM)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free
    import psutil
    return psutil.virtual_memory().available


def auto_tile_size(net, device, dtype, overlap, memory_fraction=0.4, max_tile=2048, bytes_per_pixel=None):
    """Largest tile side (before adding ``overlap`` on each side) whose inference fits in a share of free memory.

    ``bytes_per_pixel`` (peak inference memory per input pixel) defaults to the PyTorch network's estimate.

    Returns:
        int: Tile side in pixels, a multiple of ``TILE_ALIGN``, at least 64.
    """
    if bytes_per_pixel is None:
        element_size = torch.empty((), dtype=dtype).element_size()
        bytes_per_pixel = ELEMENTS_PER_PIXEL_PER_FEATURE * feature_channels(net) * element_size
    pixels = available_memory(device) * memory_fraction / bytes_per_pixel
    side = int(math.sqrt(pixels)) - 2 * overlap
    return max(64, min(max_tile, side // TILE_ALIGN * TILE_ALIGN))


def _tile_starts(length, tile, align=TILE_ALIGN):
    """Core boundaries that split ``length`` into near-equal parts of at most ``tile``, aligned to ``align``."""
    count = max(1, math.ceil(length / tile))
    step = math.ceil(length / count / align) * align
    bounds = list(range(0, length, step))
    return [(start, min(start + step, length)) for start in bounds]


def _ramp(length, start, end, blend, size):
    """1-D blending weight over a tile's input span: 1 inside the core [start, end), falling linearly to 0 over
    ``blend`` pixels centred on each interior core edge (neighbouring ramps sum to 1); ``size`` is the full axis."""
    pos = torch.arange(length, dtype=torch.float32)
    weight = torch.ones(length)
    if start > 0:
        weight = torch.minimum(weight, ((pos - start) + blend / 2 + 0.5) / blend)
    if end < size:
        weight = torch.minimum(weight, ((end - pos) + blend / 2 - 0.5) / blend)
    return weight.clamp_(0, 1)


def tiled_forward(forward, image, tile=None, overlap=96, blend=16, progress=False, align=TILE_ALIGN):
    """Run ``forward`` on overlapping tiles of ``image`` and blend the results smoothly.

    The image is split into cores of at most ``tile`` pixels; each core is run with ``overlap`` pixels of context
    on every interior side, and neighbouring results are cross-faded linearly over ``blend`` pixels around the core
    edges. With ``overlap`` larger than the network's reach, the result equals one pass over the whole image.

    Args:
        forward (callable): ``forward(x)`` with ``x`` ``(1, C, h, w)`` returns a dict ``name -> (tensor, stride)``,
            each tensor ``(1, C_name, ceil(h / stride), ceil(w / stride))``.
        image (Tensor): ``(1, C, H, W)`` on the device ``forward`` runs on.
        tile (int | None): Core side; None or a tile covering the image runs a single pass. Default: None.
        overlap (int): Context pixels around each core (rounded up to ``TILE_ALIGN``). Default: 96.
        blend (int): Width of the cross-fade in pixels (at most ``overlap``). Default: 16.
        progress (bool): Show a progress bar over the tiles. Default: False.
        align (int): Tile starts, cores and overlaps are multiples of this (of ``TILE_ALIGN`` and of the network's
            padding multiple, so that tiles see the same padding as the whole image). Default: ``TILE_ALIGN``.

    Returns:
        dict[str, Tensor]: the blended outputs, float32 on the CPU.
    """
    _, _, height, width = image.shape
    if not tile or (tile >= height and tile >= width):
        return {name: out.float().cpu() for name, (out, _) in forward(image).items()}
    align = math.lcm(TILE_ALIGN, align)
    tile = max(align, tile // align * align)
    overlap = math.ceil(overlap / align) * align
    blend = max(2, min(blend, overlap))
    sums, weights = {}, {}
    cores = [(y, x) for y in _tile_starts(height, tile, align) for x in _tile_starts(width, tile, align)]
    for (y0, y1), (x0, x1) in tqdm(cores, desc='tiles', unit='tile', leave=False, disable=not progress):
        in_y0, in_y1 = max(0, y0 - overlap), min(height, y1 + overlap)
        in_x0, in_x1 = max(0, x0 - overlap), min(width, x1 + overlap)
        weight = (
            _ramp(in_y1 - in_y0, y0 - in_y0, y1 - in_y0, blend, height - in_y0)[:, None] *
            _ramp(in_x1 - in_x0, x0 - in_x0, x1 - in_x0, blend, width - in_x0)[None, :])
        outputs = forward(image[:, :, in_y0:in_y1, in_x0:in_x1])
        for name, (out, stride) in outputs.items():
            out = out.float().cpu()
            if name not in sums:
                sums[name] = torch.zeros(out.shape[:2] + (-(-height // stride), -(-width // stride)))
                weights[name] = torch.zeros(sums[name].shape[-2:])
            # tile starts are multiples of the alignment, hence of every stride: the tile lands on whole cells
            weight_s = weight[::stride, ::stride] if stride > 1 else weight
            oy, ox = in_y0 // stride, in_x0 // stride
            h_s, w_s = out.shape[-2:]
            sums[name][:, :, oy:oy + h_s, ox:ox + w_s] += out * weight_s
            weights[name][oy:oy + h_s, ox:ox + w_s] += weight_s
    return {name: sums[name] / weights[name].clamp_min(1e-8) for name in sums}


def inference_dtype(name, device):
    """The dtype a restorer computes in for a precision name: ``auto`` is float16 on CUDA and
    :func:`sdnet_plugin.precision.resolve`'s choice on the CPU (bfloat16 where native, else float32).

    Args:
        name (str): ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device (torch.device | str): Where the network runs.

    Returns:
        torch.dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.

    Raises:
        ValueError: An unknown name, or float16 on the CPU.
    """
    device = torch.device(device)
    if name == 'auto' and device.type == 'cuda':
        return torch.float16
    return precision.resolve(name, device) or torch.float32


class NonFiniteOutputError(RuntimeError):
    """The network produced NaN or infinite values (float16 overflow, diverged weights)."""


def inference_copy(net, device, dtype=None):
    """``net`` prepared the way :class:`SDNetRestorer` runs the weights it loads (converted in place): channels-last
    on the CPU, parameters in ``dtype`` (SDNet then takes float32 input and adds its global residual in float32).

    Args:
        net (nn.Module): Network on ``device``.
        device (str | torch.device): Where it runs.
        dtype (torch.dtype | None): Compute dtype; None or ``torch.float32`` keeps float32. Default: None.

    Returns:
        nn.Module: The same network.
    """
    if torch.device(device).type == 'cpu':
        net = net.to(memory_format=torch.channels_last)
    return net if dtype in (None, torch.float32) else net.to(dtype)


class SDNetRestorer:
    """Restores images of any size: weights -> network -> device and precision -> blended tiles -> outputs.

    The network comes from exactly one of three sources:

    * ``weights``: a weights file or BasicSR checkpoint, loaded by :func:`load_network`. The restorer owns this
      network and prepares it for the device: converted to float16 or bfloat16, and channels-last on the CPU,
      where its input and global residual stay float32 (a bfloat16 copy of the whole network runs about 1.4x
      faster than float32 weights under ``torch.autocast``, which converts the activations around every layer).
    * ``net``: a network that is already built (a training model's, a benchmark's), on ``device``, in the mode the
      caller chose. It is used as it is (weights, layout and device untouched); a ``dtype`` other than float32 runs
      it under ``torch.autocast``.
    * ``onnx``: an ONNX model written by ``sdnet-export``, run by onnxruntime (float32, no offsets).

    Large images run in tiles of at most ``tile`` pixels with ``tile_overlap`` pixels of context, cross-faded
    (:func:`tiled_forward`); a CUDA out-of-memory error retries with tiles half as large, down to 64 pixels.

    Args:
        weights (str | Path | None): Weights file or BasicSR checkpoint. Default: None.
        net (nn.Module | None): A ready network on ``device``. Default: None.
        onnx (str | Path | None): ONNX model file. Default: None.
        device (str | torch.device): Where the network runs. Default: ``'cpu'``.
        dtype (torch.dtype | None): Compute precision: None or ``torch.float32``, ``torch.float16`` (CUDA),
            ``torch.bfloat16``; see :func:`inference_dtype` for precision names. Default: None.
        tile (int | None): Tile side in pixels; 0 runs whole images; None picks it from free memory. Default: 0.
        tile_overlap (int): Context pixels around each tile. Default: 96.
        offset_level (int | str | None): SVD level whose offsets come with every restoration, ``'coarsest'`` for
            the network's coarsest one, None for none. Default: None.
        preset (str): SDNet preset of checkpoints that do not record their network (``weights`` only).
            Default: ``'base'``.
        threads (int | None): onnxruntime's intra-op threads (``onnx`` only). Default: None.

    Attributes:
        net (nn.Module | OnnxNetwork): The network that runs.
        network_opt (dict): Its options (``network_g``); ``{}`` for a ``net`` without ``network_opt``.
        source (str): Where it came from: the weights path, ``'<model> (onnxruntime)'`` or ``'network'``.
        onnx (str | None): The ONNX model run by onnxruntime, if any.
        tile (int): Current tile side (0: whole images); lowered after an out-of-memory error.
    """

    def __init__(self, weights=None, net=None, onnx=None, device='cpu', dtype=None, tile=0, tile_overlap=96,
                 offset_level=None, preset='base', threads=None):
        if sum(source is not None for source in (weights, net, onnx)) != 1:
            raise ValueError('give exactly one of weights, net and onnx')
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.onnx = None if onnx is None else str(onnx)
        owned = weights is not None
        if owned:
            net, self.network_opt = load_network(weights, self.device, half=self.dtype == torch.float16, preset=preset)
            net = inference_copy(net, self.device, self.dtype)
            self.source = str(weights)
        elif onnx is not None:
            from sdnet_plugin.export import OnnxNetwork
            if self.dtype != torch.float32:
                raise ValueError('an ONNX model runs in float32')
            net = OnnxNetwork(onnx, threads, self.device)
            self.network_opt, self.source = net.network_opt, f'{onnx} (onnxruntime)'
        else:
            self.network_opt, self.source = dict(getattr(net, 'network_opt', None) or {}), 'network'
        self.net = net
        # networks of other callers compute under autocast; owned networks are converted to the dtype. On the CPU
        # their input stays float32 (SDNet casts it, and adds its global residual in float32); on CUDA the input
        # is converted too
        autocast = self.dtype != torch.float32 and not owned
        self.autocast_dtype = self.dtype if autocast else None
        self.input_dtype = torch.float32 if autocast or self.device.type == 'cpu' else self.dtype
        self.tile_overlap = tile_overlap
        if tile is None:
            bytes_per_pixel = net.bytes_per_pixel() if hasattr(net, 'bytes_per_pixel') else None  # ONNX models
            tile = auto_tile_size(net, self.device, self.dtype, tile_overlap, bytes_per_pixel=bytes_per_pixel)
        self.tile = tile
        self.offset_level = self._check_offset_level(offset_level)

    @property
    def svd_levels(self):
        """Levels of the network's SVD modules, sorted (empty for networks without offsets)."""
        return sorted(getattr(self.net, 'svd_levels', ()))

    def _check_offset_level(self, level):
        if level is None:
            return None
        levels = self.svd_levels
        if level == 'coarsest' and levels:
            return levels[-1]
        if level not in levels:
            raise ValueError(f'offset level {level} is not one of the network\'s SVD levels {levels}')
        return level

    def offset_geometry(self):
        """``(kernel_size, dilation, stride)`` of the SVD module whose offsets are returned."""
        return self.net.deform_kernel_size, self.net.deform_dilation, 2**self.offset_level

    def _network_outputs(self, x):
        """The network on one tile, as :func:`tiled_forward` takes it: ``name -> (tensor, stride)``."""
        if self.offset_level is None:
            return {'image': (self.net(x), 1)}
        out, offsets = self.net(x, return_offsets=True)
        entry = next(o for o in offsets if o['level'] == self.offset_level)
        return {'image': (out, 1), 'offset': (entry['offset'], entry['stride'])}

    @torch.no_grad()
    def forward(self, lq, progress=False):
        """Restore a batch, tiled when it is larger than :attr:`tile`.

        Args:
            lq (Tensor): Blurry images with shape (N, 3, H, W), in [0, 1], on any device.
            progress (bool): Show a progress bar over the tiles. Default: False.

        Returns:
            dict[str, Tensor]: ``'image'``: restored images with shape (N, 3, H, W), float32 on the CPU (not
            clamped); with an offset level, ``'offset'``: that SVD module's offsets with shape
            (N, 2K, ceil(H/s), ceil(W/s)), K = kernel_size**2 and s its stride.
        """
        x = lq.to(self.device, self.input_dtype)
        while True:
            try:
                with precision.autocast(self.device, self.autocast_dtype):
                    return tiled_forward(self._network_outputs, x, self.tile, self.tile_overlap, progress=progress,
                                         align=getattr(self.net, 'pad_multiple', 1))
            except torch.cuda.OutOfMemoryError:
                # the memory estimate was optimistic (or other processes took memory): retry with smaller tiles
                current = self.tile or max(x.shape[-2:])
                if current <= 64:
                    raise
                self.tile = max(64, current // 2)
                torch.cuda.empty_cache()

    @torch.no_grad()
    def forward_offsets(self, lq):
        """One pass over whole images that returns every SVD module's offsets too (tiles would cut them up).

        Args:
            lq (Tensor): Blurry images with shape (N, 3, H, W), in [0, 1], on any device.

        Returns:
            tuple[Tensor, list[dict]]: Restored images with shape (N, 3, H, W) as the network gives them (on the
            device), and the offsets as ``SDNet(x, return_offsets=True)`` gives them.
        """
        with precision.autocast(self.device, self.autocast_dtype):
            return self.net(lq.to(self.device, self.input_dtype), return_offsets=True)

    def restore(self, rgb, progress=False):
        """Restore one image.

        Args:
            rgb (ndarray): Blurry image with shape (H, W, 3), float32 RGB in [0, 1].
            progress (bool): Show a progress bar over the tiles. Default: False.

        Returns:
            tuple[ndarray, Tensor | None]: The restored image with shape (H, W, 3), float32 RGB in [0, 1], and the
            offsets of the chosen SVD module with shape (1, 2K, ceil(H/s), ceil(W/s)) (None without an offset
            level).

        Raises:
            NonFiniteOutputError: The network produced NaN or infinite values.
        """
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        outputs = self.forward(x, progress=progress)
        if not torch.isfinite(outputs['image']).all():
            raise NonFiniteOutputError('the network produced NaN or infinite values (float16 overflow? try '
                                       '--precision fp32)')
        restored = outputs['image'][0].float().clamp_(0, 1).permute(1, 2, 0).numpy()
        return restored, outputs.get('offset')

    __call__ = restore
