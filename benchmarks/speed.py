"""Size and speed of the SDNet presets: parameters, MACs, and inference latency per DCN backend, device and dtype.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (multiply-accumulates = FLOPs / 2) on the
meta device, with every modulated deformable convolution counted as the plain convolution of the same shape
(the bilinear sampling and the modulation are left out; they add about 5 multiply-adds per sampled value, small
next to the convolution's ``C_out * K`` per sampled value). Latency is the median wall time of a full forward pass
without autograd, after warm-up, on one image of the requested size.

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

from sdnet_plugin.archs.sdnet_arch import SDNET_PRESETS, SDNet
from sdnet_plugin.ops import BACKENDS, available_backends, select_backend
from sdnet_plugin.ops import modulated_deform_conv as dcn_ops


def parse_size(text):
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WIDTHxHEIGHT, e.g. 1280x720, got {text!r}') from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return width, height


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
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help='wall: elapsed time (default); cpu: CPU time of this process, summed over its threads, '
                        'which other load on a shared machine barely changes (use with --threads 1)')
    parser.add_argument('--macs-only', action='store_true', help='print the presets table only (no timing)')
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
