"""benchmarks/onnx_speed.py: parity mode on tiny renders, and the timing table's rows."""
import runpy
import types
from pathlib import Path

import pytest
import torch

from sdnet_plugin.archs import SDNet

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / 'onnx_speed.py'
pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def onnx_speed():
    return types.SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def test_parity_and_timing_rows(onnx_speed, synthetic_gopro, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('SDNET_DCN_BACKEND', 'torch')  # skip timing every backend for 'auto'
    torch.manual_seed(0)
    net = SDNet('tiny')
    torch.nn.init.normal_(net.conv_last.weight, std=0.05)  # starts at zero: make the output depend on the network
    for module in net.svd.values():
        torch.nn.init.normal_(module.dcn.conv_offset[-1].bias, std=1.0)  # sampling points off the grid
    weights = tmp_path / 'tiny.pth'
    torch.save({'params': net.state_dict(), 'network_g': {'type': 'SDNet', 'preset': 'tiny'}}, weights)
    threads = torch.get_num_threads()
    try:
        rows = onnx_speed.main(
            ['--weights', str(weights), '--deform-ops', 'gridsample', '--parity', synthetic_gopro['root']])
        (data, count, size, op, diff, blurry, torch_psnr, ort_psnr), = rows
        assert count == synthetic_gopro['count'] and size == '64x48' and op == 'gridsample'
        assert diff <= 1e-4 and abs(ort_psnr - torch_psnr) <= 0.01 and abs(torch_psnr - blurry) > 0.01
        rows = onnx_speed.main(
            ['--weights', str(weights), '--deform-ops', 'gridsample', '--size', '40x24', '--repeats', '1'])
    finally:
        torch.set_num_threads(threads)
    assert [row[:2] for row in rows][-1:] == [('onnxruntime', 'gridsample')] and rows[0][0] == 'PyTorch'
    assert [row[0] for row in rows[1:-1]
            ] == (['PyTorch, bf16 channels-last'] if onnx_speed.precision.resolve('auto', 'cpu') else []
                  )  # the default CPU path, where the CPU computes bfloat16 natively
    assert all(seconds > 0 for _, _, seconds in rows)
    assert '| onnxruntime | gridsample |' in capsys.readouterr().out
