"""``sdnet-export`` (sdnet_plugin/export.py): ONNX models checked against PyTorch in onnxruntime, weights files."""
import cv2
import numpy as np
import pytest
import torch

from sdnet_plugin import deblur, export
from sdnet_plugin.inference import SDNetRestorer, load_network
from sdnet_plugin.ops import ModulatedDeformConv2d

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


@pytest.fixture(scope='session')
def tiny_onnx(tiny_weights, tmp_path_factory):
    """The random tiny SDNet of ``tiny_weights`` exported with the GridSample path."""
    path = tmp_path_factory.mktemp('onnx') / 'tiny.onnx'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        info = export.export_onnx(path, tiny_weights)
    finally:
        torch.set_num_threads(threads)
    return path, info


def _reference(weights, x):
    net, _ = load_network(weights)
    with torch.no_grad():
        return net(x).clamp(0, 1).numpy()


def _image(batch, height, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 4 + 2, width // 4 + 2, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode='bilinear').clamp(0, 1)


def test_onnx_model_matches_pytorch_at_any_size(tiny_onnx, tiny_weights):
    path, info = tiny_onnx
    assert info['max_abs_diff'] <= 1e-4 and info['deform_op'] == 'gridsample'
    model = onnx.load(path)
    ops = {node.op_type for node in model.graph.node}
    assert 'GridSample' in ops and 'DeformConv' not in ops
    (graph_input, ), (_, ) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # N, H, W free
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    runner = export.OnnxNetwork(path, threads=1)
    assert runner.network_opt == {'type': 'SDNet', 'preset': 'tiny', 'preset_version': 1}
    for shape in ((1, 37, 53), (2, 24, 40), (1, 5, 130)):
        x = _image(*shape)
        out = runner.run(x.numpy())
        assert out.shape == x.shape and out.dtype == np.float32
        assert np.abs(out - _reference(tiny_weights, x)).max() <= 1e-4, shape
        assert out.min() >= 0 and out.max() <= 1


def test_default_preset_light_exports_and_tiles_like_pytorch(tiny_sdnet, checkpoint_writer, tmp_path):
    """``light`` pads to a multiple of 16: the graph pads any size itself, and ``sdnet-deblur --onnx`` cuts tiles on
    that multiple, as it does for the PyTorch network, so both give the same tiled output."""
    net = tiny_sdnet(preset='light')
    network_opt = {'type': 'SDNet', 'preset': 'light', 'preset_version': net.preset_version}  # as training stores it
    weights = checkpoint_writer(net, tmp_path / 'light.pth', network_opt)
    info = export.export_onnx(tmp_path / 'light.onnx', weights)
    assert info['max_abs_diff'] <= 1e-4 and info['network_g'] == network_opt
    runner = export.OnnxNetwork(tmp_path / 'light.onnx', threads=1)
    assert runner.pad_multiple == 16
    x = _image(2, 37, 53)
    assert np.abs(runner.run(x.numpy()) - _reference(weights, x)).max() <= 1e-4
    rgb = _image(1, 45, 70, seed=2)[0].permute(1, 2, 0).numpy()
    tiles = {'device': 'cpu', 'tile': 24, 'tile_overlap': 20}  # cut on multiples of 4 they would differ
    onnx_out, _ = SDNetRestorer(onnx=tmp_path / 'light.onnx', threads=1, **tiles).restore(rgb)
    torch_out, _ = SDNetRestorer(weights=weights, dtype=torch.float32, **tiles).restore(rgb)
    assert np.abs(onnx_out - torch_out).max() <= 1e-4


def test_export_restores_the_layers_backends(tiny_sdnet):
    net = tiny_sdnet()
    layers = [m for m in net.modules() if isinstance(m, ModulatedDeformConv2d)]
    layers[0].backend = 'torchvision'
    before = [layer.backend for layer in layers]
    with pytest.raises(RuntimeError), export.exportable_backends(net, 'torch'):
        assert {layer.backend for layer in layers} == {'torch'}
        raise RuntimeError('interrupted')
    assert [layer.backend for layer in layers] == before


def test_deformconv_op(tiny_weights, tmp_path):
    path = tmp_path / 'tiny_deformconv.onnx'
    try:
        info = export.export_onnx(path, tiny_weights, deform_op='deformconv')
    except RuntimeError as error:
        if 'DeformConv' in str(error) or 'NOT_IMPLEMENTED' in str(error):
            pytest.skip(f'this onnxruntime has no DeformConv kernel: {error}')
        raise
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'DeformConv' in ops and 'GridSample' not in ops and info['opset'] == 19
    x = _image(1, 30, 46, seed=3)
    assert np.abs(export.OnnxNetwork(path, threads=1).run(x.numpy()) - _reference(tiny_weights, x)).max() <= 1e-4


def test_cli_writes_nothing_for_bad_weights(tmp_path, capsys):
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    status = export.main(
        ['--format', 'onnx', '-o',
         str(tmp_path / 'model.onnx'), '--weights',
         str(tmp_path / 'broken.pth')])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith('sdnet-export: error: cannot read weights')
    assert list(tmp_path.iterdir()) == [tmp_path / 'broken.pth']
    with pytest.raises(SystemExit):
        export.main(['--format', 'weights', '-o', str(tmp_path / 'w.pth')])  # needs --weights


def test_weights_format_then_deblur_with_them(tmp_path, tiny_weights, capsys):
    shipped = tmp_path / 'weights' / 'sdnet_tiny.pth'
    status = export.main(['--format', 'weights', '--weights', str(tiny_weights), '-o', str(shipped)])
    assert status == 0 and 'float16' in capsys.readouterr().out
    cv2.imwrite(str(tmp_path / 'shot.png'), np.full((10, 12, 3), 128, np.uint8))
    status = deblur.main([str(tmp_path / 'shot.png'), '-o', str(tmp_path / 'out'), '--weights', str(shipped)])
    assert status == 0 and (tmp_path / 'out' / 'shot.png').is_file()


def test_deblur_runs_the_onnx_model(tiny_onnx, tiny_weights, tmp_path, capsys):
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8), (45, 33), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / 'shot.png'), photo)
    common = [str(tmp_path / 'shot.png'), '--threads', '1', '--tile', '16', '--tile-overlap', '16']
    assert deblur.main(common + ['-o', str(tmp_path / 'onnx'), '--onnx', str(tiny_onnx[0])]) == 0
    assert deblur.main(common +
                       ['-o', str(tmp_path / 'torch'), '--weights',
                        str(tiny_weights), '--precision', 'fp32']) == 0
    assert 'onnxruntime' in capsys.readouterr().err
    restored = cv2.imread(str(tmp_path / 'onnx' / 'shot.png')).astype(int)
    assert restored.shape == photo.shape
    assert np.abs(restored - cv2.imread(str(tmp_path / 'torch' / 'shot.png')).astype(int)).max() <= 1
    assert np.abs(restored - photo.astype(int)).max() > 0  # the network did something
    with pytest.raises(SystemExit):
        deblur.main(common + ['-o', str(tmp_path / 'x'), '--onnx', str(tiny_onnx[0]), '--save-offsets'])
