"""onnxruntime next to PyTorch: latency of SDNet exported by ``sdnet-export``, per form of the deformable convolution.

The weights (default: the shipped ones) are exported to a temporary folder with each ``--deform-ops`` form
(``gridsample``: the pure-PyTorch path as ``GridSample``; ``deformconv``: ONNX ``DeformConv``, skipped when this
onnxruntime has no kernel for it), then PyTorch (float32, the DCN backend ``auto`` picks) and onnxruntime's CPU
provider each restore one image of ``--size``, with the same number of threads. Latency is the median of
``--repeats`` runs after a warm-up run.

With ``--parity DIR [DIR ...]`` (GoPro-layout folders, e.g. held-out renders of ``datasets_prep/synthesize_gopro.py``)
it compares the exported model with PyTorch instead: the largest absolute difference of the float outputs, and
BasicSR's PSNR (RGB, 8-bit, as ``scripts/evaluation.py``) of the blurry input and of both restorations.

Example::

    python benchmarks/onnx_speed.py                          # 1280x720, shipped weights, 1 thread
    python benchmarks/onnx_speed.py --threads 2 --deform-ops gridsample --size 640x360
    python benchmarks/onnx_speed.py --clock cpu              # CPU time: barely changed by other load
    python benchmarks/onnx_speed.py --parity datasets/synthetic/eval --deform-ops gridsample
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from basicsr.utils import img2tensor, tensor2img  # noqa: E402
from speed import median_time, parse_size  # noqa: E402
from tqdm import tqdm

from sdnet_plugin import evaluation  # noqa: E402
from sdnet_plugin import precision  # noqa: E402
from sdnet_plugin.export import DEFORM_OPS, OnnxNetwork, export_onnx  # noqa: E402
from sdnet_plugin.inference import find_default_weights, inference_copy, load_network  # noqa: E402
from sdnet_plugin.ops import ModulatedDeformConv2d, select_backend  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=parse_size, default=(1280, 720), help='WIDTHxHEIGHT (default: 1280x720)')
    parser.add_argument('--weights', default=None, help='weights file (default: the shipped weights)')
    parser.add_argument('--deform-ops', nargs='+', default=list(DEFORM_OPS), choices=list(DEFORM_OPS),
                        help='exported forms to time (default: all)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of both runtimes (default: 1)')
    parser.add_argument('--repeats', type=int, default=2, help='timed runs per row (default: 2)')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help='wall: elapsed time (default); cpu: CPU time of this process over all its threads')
    parser.add_argument('--parity', nargs='+', default=None, metavar='DIR',
                        help='compare outputs on the images of these GoPro-layout folders instead of timing')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error('--repeats and --threads must be at least 1')
    args.weights = args.weights or find_default_weights()
    if args.weights is None:
        parser.error('no shipped weights found; pass --weights')
    return args


def exported_models(args, folder):
    """``(deform op, OnnxNetwork)`` of each requested form that this onnxruntime runs."""
    for deform_op in args.deform_ops:
        path = Path(folder) / f'{deform_op}.onnx'
        try:
            export_onnx(path, args.weights, deform_op=deform_op)
        except RuntimeError as error:  # e.g. no DeformConv kernel in this onnxruntime
            print(f'{deform_op}: skipped ({str(error).splitlines()[0][:160]})', file=sys.stderr)
            continue
        yield deform_op, OnnxNetwork(path, threads=args.threads)


def to_image(tensor):
    return tensor2img(tensor, rgb2bgr=True, out_type=np.uint8, min_max=(0, 1))


@torch.no_grad()
def parity(args):
    """Rows ``(folder, images, size, deform op, max abs difference, blurry / PyTorch / onnxruntime PSNR)``."""
    net, _ = load_network(args.weights)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        models = list(exported_models(args, folder))
        for data in args.parity:
            pairs = evaluation.find_pairs(data)
            results = {op: {'diff': 0.0, 'psnr': []} for op, _ in models}
            blurry_psnr, torch_psnr, sizes = [], [], set()
            for _, blur_path, sharp_path in tqdm(pairs, desc=Path(data).name, unit='img', leave=False):
                blurry, sharp = evaluation.read_image(blur_path), evaluation.read_image(sharp_path)
                sizes.add(f'{blurry.shape[1]}x{blurry.shape[0]}')
                x = img2tensor(blurry.astype(np.float32) / 255.0, bgr2rgb=True).unsqueeze(0)
                reference = net(x).clamp(0, 1)
                blurry_psnr.append(evaluation.image_metrics(blurry, sharp)['psnr'])
                torch_psnr.append(evaluation.image_metrics(to_image(reference), sharp)['psnr'])
                for op, model in models:
                    out = model(x)
                    results[op]['diff'] = max(results[op]['diff'], float((out - reference).abs().max()))
                    results[op]['psnr'].append(evaluation.image_metrics(to_image(out), sharp)['psnr'])
            for op, result in results.items():
                rows.append((data, len(pairs), ', '.join(sorted(sizes)), op, result['diff'], np.mean(blurry_psnr),
                             np.mean(torch_psnr), np.mean(result['psnr'])))
    print(f'onnxruntime vs PyTorch float32 ({Path(args.weights).name}): outputs and PSNR against the sharp images\n')
    print('| data | images | size | deformable convolution | max abs difference | blurry PSNR | PyTorch PSNR | '
          'onnxruntime PSNR | gain difference (dB) |')
    print('|---|---:|---|---|---:|---:|---:|---:|---:|')
    for data, count, size, op, diff, blurry, torch_value, ort_value in rows:
        print(f'| {data} | {count} | {size} | {op} | {diff:.1e} | {blurry:.3f} | {torch_value:.3f} | {ort_value:.3f} '
              f'| {ort_value - torch_value:+.4f} |')
    return rows


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return parity(args) if args.parity else timing(args)
    finally:
        torch.set_num_threads(threads)


def timing(args):
    """Rows ``(runtime, deformable convolution, seconds per frame)``."""
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    width, height = args.size
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    rows = []
    net, network_opt = load_network(args.weights)
    backend = select_backend('cpu', torch.float32, backward=False)
    for layer in net.modules():
        if isinstance(layer, ModulatedDeformConv2d):
            layer.backend = backend
    with torch.inference_mode():
        rows.append(('PyTorch', f'{backend} backend', median_time(lambda: net(image), args.repeats, 1, clock)))
    dtype = precision.resolve('auto', 'cpu')
    if dtype is not None:  # the default CPU path of sdnet-deblur (a bfloat16 copy), for reference (not float32)
        fast = inference_copy(net, 'cpu', dtype)
        for layer in fast.modules():
            if isinstance(layer, ModulatedDeformConv2d):
                layer.backend = 'auto'
        with torch.inference_mode():
            rows.append((f'PyTorch, {precision.name_of(dtype)} channels-last', 'auto backend',
                         median_time(lambda: fast(image), args.repeats, 1, clock)))
    with tempfile.TemporaryDirectory() as folder:
        array = image.numpy()
        for deform_op, session in exported_models(args, folder):
            rows.append(('onnxruntime', deform_op, median_time(lambda: session.run(array), args.repeats, 1, clock)))
    print(f'SDNet {network_opt.get("preset", "")} ({Path(args.weights).name}) at {width}x{height}, float32, CPU, '
          f'{args.threads} thread{"s" if args.threads > 1 else ""}, {args.clock} clock; torch {torch.__version__}, '
          f'onnxruntime {onnxruntime.__version__}\n')
    print('| runtime | deformable convolution | seconds per frame | frames/s | megapixels/s |')
    print('|---|---|---:|---:|---:|')
    for runtime, dcn, seconds in rows:
        print(f'| {runtime} | {dcn} | {seconds:.2f} | {1 / seconds:.2f} | {width * height / 1e6 / seconds:.2f} |')
    return rows


if __name__ == '__main__':
    main()
