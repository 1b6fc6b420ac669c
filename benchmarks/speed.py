"""Size and speed of the SDNet presets: parameters, MACs, and inference latency per DCN backend, device and dtype.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (multiply-accumulates = FLOPs / 2) on the
meta device, with every modulated deformable convolution counted as the plain convolution of the same shape
(the bilinear sampling and the modulation are left out; they add about 5 multiply-adds per sampled value, small
next to the convolution's ``C_out * K`` per sampled value). Latency is the median wall time of a full forward pass
without autograd, after warm-up, on one image of the requested size.

The CPU fast path (bfloat16 autocast where the CPU computes it natively, channels-last, the ``fused`` deformable
convolution) is compared with the float32 NCHW path of the pure-PyTorch backend in the same run: one deformable
layer against a plain 3x3 convolution of the same shape (inference and training), training iterations per
CPU-second of each preset (8 x 128x128 patches, L1 + flow-guided offset loss, AdamW), and the frame time.

Example::

    python benchmarks/speed.py                                  # all presets, backends, devices at 1280x720
    python benchmarks/speed.py --presets base --backends torch --repeats 5 --size 640x360
    python benchmarks/speed.py --threads 1 --clock cpu          # single-core compute time on a busy machine
"""
import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from sdnet_plugin import precision
from sdnet_plugin.archs.sdnet_arch import SDNET_PRESETS, SDNet
from sdnet_plugin.inference import inference_copy
from sdnet_plugin.losses.flow_offset_loss import FlowGuidedOffsetLoss
from sdnet_plugin.ops import BACKENDS, available_backends
from sdnet_plugin.ops import modulated_deform_conv as dcn_ops
from sdnet_plugin.ops import modulated_deform_conv2d, select_backend
from sdnet_plugin.utils import parse_size


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=parse_size, default=(1280, 720), help='WIDTHxHEIGHT (default: 1280x720)')
    parser.add_argument('--presets', nargs='+', default=list(SDNET_PRESETS), choices=list(SDNET_PRESETS))
    parser.add_argument('--backends', nargs='+', default=None, choices=list(BACKENDS),
                        help='DCN backends to time (default: every available one)')
    parser.add_argument('--devices', nargs='+', default=None, choices=['cpu', 'cuda'],
                        help='default: cpu, plus cuda when present')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per row (default: 3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs first (default: 1; CUDA adds 2)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument(
        '--clock', choices=['wall', 'cpu'], default='wall',
        help='wall: elapsed time (default); cpu: CPU time of this process, summed over its threads, '
        'which other load on a shared machine barely changes (use with --threads 1)')
    parser.add_argument('--macs-only', action='store_true', help='print the presets table only (no timing)')
    parser.add_argument('--skip-backends', action='store_true', help='leave out the per-backend latency table')
    parser.add_argument('--skip-fast-path', action='store_true', help='leave out the CPU fast-path tables')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.devices is None:
        args.devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() and args.clock == 'wall' else [])
    elif args.clock == 'cpu' and 'cuda' in args.devices:
        parser.error('--clock cpu measures CPU work only; use --devices cpu')
    elif 'cuda' in args.devices and not torch.cuda.is_available():
        parser.error('--devices cuda: CUDA is not available here')
    available = available_backends()
    if args.backends is None:
        args.backends = available
    missing = [name for name in args.backends if name not in available]
    if missing:
        parser.error(f'DCN backend(s) {", ".join(missing)} not available here (available: {", ".join(available)})')
    return args


@contextlib.contextmanager
def deform_conv_as_plain_conv():
    """Run every modulated deformable convolution as the ``conv2d`` of the same shape (for counting MACs)."""

    def plain(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1, backend='auto'):
        return F.conv2d(input, weight, bias, stride, padding, dilation)

    original = dcn_ops.modulated_deform_conv2d
    dcn_ops.modulated_deform_conv2d = plain
    try:
        yield
    finally:
        dcn_ops.modulated_deform_conv2d = original


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


def count_macs(preset, width, height):
    """Multiply-accumulates of one forward pass at ``width x height``; DCNs counted as their equivalent conv.

    ``preset`` is an SDNet preset name or a function returning any network.
    """
    with torch.device('meta'):
        net = (preset() if callable(preset) else SDNet(preset)).eval()
        x = torch.empty(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with deform_conv_as_plain_conv(), counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() // 2


def time_forward(preset, backend, device, dtype, width, height, repeats, warmup, clock=time.perf_counter):
    """Median seconds (of ``clock``) of one forward pass (no autograd) of ``preset`` with the given DCN backend."""
    torch.manual_seed(0)
    net = SDNet(preset, dcn_backend=backend).eval().to(device, dtype)
    x = torch.rand(1, 3, height, width, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + (2 if device == 'cuda' else 0) + repeats):
            sync()
            start = clock()
            net(x)
            sync()
            if i >= warmup + (2 if device == 'cuda' else 0):
                times.append(clock() - start)
    del net, x
    if device == 'cuda':
        torch.cuda.empty_cache()
    return statistics.median(times)


def median_time(fn, repeats, warmup, clock):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


# One SVD-sized deformable layer against a plain conv: (label, input shape, training).
LAYER_CASES = (('inference 1x32x720x1280', (1, 32, 720, 1280), False), ('training 8x32x128x128', (8, 32, 128, 128),
                                                                        True))
# The CPU paths compared by the fast-path tables: (name, autocast dtype, channels-last, DCN backend).
OLD_PATH = ('fp32 NCHW, torch DCN', None, False, 'torch')


def fast_path():
    dtype = precision.resolve('auto', 'cpu')
    return (f'{precision.name_of(dtype)} channels-last, auto DCN', dtype, True, 'auto')


def _layout(tensor, channels_last):
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def time_layer(shape, training, path, repeats, warmup, clock):
    """Seconds of a plain 3x3 conv and of a deformable conv of the same shape (offsets of a few pixels)."""
    _, dtype, channels_last, backend = path
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = _layout(torch.randn(b, c, h, w, generator=gen), channels_last)
    offset = _layout(torch.randn(b, 18, h, w, generator=gen) * 3, channels_last)
    mask = _layout(torch.rand(b, 9, h, w, generator=gen), channels_last)
    weight = _layout(torch.randn(c, c, 3, 3, generator=gen) / 17, channels_last)
    bias = torch.zeros(c)
    tensors = [t.requires_grad_(training) for t in (x, offset, mask, weight, bias)]

    def run(fn):

        def call():
            with torch.set_grad_enabled(training), precision.autocast('cpu', dtype):
                out = fn()
            if training:
                out.backward(torch.ones_like(out))

        return median_time(call, repeats, warmup, clock)

    conv = run(lambda: F.conv2d(tensors[0], tensors[3], tensors[4], 1, 1))
    dcn = run(lambda: modulated_deform_conv2d(*tensors[:3], tensors[3], tensors[4], 1, 1, 1, backend=backend))
    return conv, dcn


TRAINING_BATCH = (8, 128)  # patches per step, patch side


def time_training_step(preset, path, repeats, warmup, clock):
    """Seconds of one training step of the default recipe: L1 + order-invariant offset loss, AdamW."""
    _, dtype, channels_last, backend = path
    batch, patch = TRAINING_BATCH
    torch.manual_seed(0)
    net = SDNet(preset, dcn_backend=backend)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    offset_loss = FlowGuidedOffsetLoss(loss_weight=0.1, order_invariant=True)
    lq = _layout(torch.rand(batch, 3, patch, patch), channels_last)
    gt, flow = torch.rand(batch, 3, patch, patch), torch.randn(batch, 4, patch, patch) * 3

    def step():
        optimizer.zero_grad()
        with precision.autocast('cpu', dtype):
            out, offsets = net(lq, return_offsets=True)
            loss = F.l1_loss(out, gt) + offset_loss(offsets, flow)
        loss.backward()
        optimizer.step()

    return median_time(step, repeats, warmup, clock)


def time_frame(preset, path, width, height, repeats, warmup, clock):
    """Seconds of one frame as ``sdnet-deblur`` computes it: the network converted to the path's dtype (float32
    input and global residual)."""
    _, dtype, channels_last, backend = path
    torch.manual_seed(0)
    net = SDNet(preset, dcn_backend=backend).eval()
    if channels_last:  # the new path, as sdnet-deblur runs it (the old one is float32 NCHW)
        net = inference_copy(net, 'cpu', dtype)
    x = torch.rand(1, 3, height, width)

    def forward():
        with torch.inference_mode():
            net(x)

    return median_time(forward, repeats, warmup, clock)


def run_fast_path(args, clock):
    """Print the fast-path tables (CPU): each row times the old and the new path in the same run."""
    old, new = OLD_PATH, fast_path()
    unit = 'CPU ms' if args.clock == 'cpu' else 'ms'
    print(f'\nCPU fast path ({device_name("cpu")}): new = {new[0]}, old = {old[0]}; median of {args.repeats}, '
          f'{"process CPU time" if args.clock == "cpu" else "wall time"}\n')
    print(f'| deformable 3x3 layer, 32->32 | path | plain conv ({unit}) | deformable ({unit}) | deformable / conv |')
    print('|---|---|---:|---:|---:|')
    best = {}
    for mode, shape, training in LAYER_CASES:
        for path in (old, new):
            conv, dcn = time_layer(shape, training, path, args.repeats, args.warmup, clock)
            best[mode] = (min(best.get(mode, (conv, ))[0], conv), min(best.get(mode, (0, dcn))[1], dcn))
            print(f'| {mode} | {path[0]} | {conv * 1e3:.1f} | {dcn * 1e3:.1f} | {dcn / conv:.1f}x |')
    for mode, (conv, dcn) in best.items():
        print(f'| {mode} | each at its best | {conv * 1e3:.1f} | {dcn * 1e3:.1f} | **{dcn / conv:.1f}x** |')

    width, height = args.size
    print(f'\n| preset | training it/s, old | training it/s, new | speed-up | {width}x{height} old ({unit}) | '
          f'new ({unit}) | speed-up |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for preset in tqdm(args.presets, desc='fast path', unit='preset', file=sys.stderr):
        steps = [time_training_step(preset, p, args.repeats, args.warmup, clock) for p in (old, new)]
        frames = [time_frame(preset, p, width, height, args.repeats, args.warmup, clock) for p in (old, new)]
        print(f'| {preset} | {1 / steps[0]:.2f} | {1 / steps[1]:.2f} | **{steps[0] / steps[1]:.2f}x** | '
              f'{frames[0] * 1e3:.0f} | {frames[1] * 1e3:.0f} | **{frames[0] / frames[1]:.2f}x** |')
    batch, patch = TRAINING_BATCH
    print(f'\n(it/s: iterations per second of the chosen clock, {batch} x {patch}x{patch} patches, L1 + offset loss, '
          'AdamW)')


def device_name(device):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f'CPU ({threads} thread{"s" if threads > 1 else ""})'


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args):
    width, height = args.size
    megapixels = width * height / 1e6

    print(f'SDNet presets at {width}x{height} (MACs: FlopCounterMode, DCN counted as its equivalent conv)\n')
    print('| preset | parameters | GMACs |')
    print('|---|---:|---:|')
    for preset in args.presets:
        params = count_parameters(SDNet(preset, dcn_backend='torch'))
        print(f'| {preset} | {params:,} ({params / 1e6:.2f} M) | {count_macs(preset, width, height) / 1e9:.1f} |')
    if args.macs_only:
        return 0
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    if not args.skip_fast_path and 'cpu' in args.devices:
        run_fast_path(args, clock)
    if args.skip_backends:
        return 0

    dtypes = {'cpu': [torch.float32], 'cuda': [torch.float32, torch.float16]}
    rows = [(p, b, d, t) for p in args.presets for d in args.devices for t in dtypes[d] for b in args.backends]
    results = []
    for preset, backend, device, dtype in tqdm(rows, desc='timing', unit='row', file=sys.stderr):
        try:
            seconds = time_forward(preset, backend, device, dtype, width, height, args.repeats, args.warmup,
                                   clock=time.process_time if args.clock == 'cpu' else time.perf_counter)
            results.append((preset, backend, device, dtype, seconds, None))
        except Exception as error:  # e.g. a backend without a kernel for this dtype: report it, keep going
            results.append((preset, backend, device, dtype, None, f'{type(error).__name__}: {error}'.split('\n')[0]))

    what = 'CPU time' if args.clock == 'cpu' else 'Latency'
    print(f'\n{what} of inference at {width}x{height}, batch 1, no autograd, median of {args.repeats} '
          f'(torch {torch.__version__})\n')
    print(f'| preset | DCN backend | device | dtype | {what.lower()} (ms) | frames/s | megapixels/s |')
    print('|---|---|---|---|---:|---:|---:|')
    for preset, backend, device, dtype, seconds, error in results:
        head = f'| {preset} | {backend} | {device_name(device)} | {str(dtype).replace("torch.", "")} |'
        if seconds is None:
            print(f'{head} failed: {error[:80]} | | |')
        else:
            print(f'{head} {seconds * 1e3:.1f} | {1 / seconds:.3g} | {megapixels / seconds:.3g} |')
    for device in args.devices:
        for dtype in dtypes[device]:
            choice = select_backend(device, dtype, backward=False)
            print(f"\n'auto' picks {choice!r} for {device} {str(dtype).replace('torch.', '')} inference", end='')
    print()
    return 0


if __name__ == '__main__':
    sys.exit(main())
