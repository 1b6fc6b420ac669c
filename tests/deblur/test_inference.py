"""Weights loading / export and tiled inference (sdnet_plugin/inference.py)."""
import pytest
import torch

from sdnet_plugin import inference
from sdnet_plugin.inference import TILE_ALIGN, auto_tile_size, export_weights, load_network, load_weights, tiled_forward

TINY = {'type': 'SDNet', 'preset': 'tiny'}
TINY_V1 = {**TINY, 'preset_version': 1}  # as loaded: files without a preset version are version 1
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def _same_parameters(net_a, net_b):
    return all(torch.equal(a, b) for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()))


def test_training_checkpoint_prefers_params_ema_and_reads_network_g(tmp_path, tiny_sdnet):
    raw, ema = tiny_sdnet(seed=1), tiny_sdnet(seed=2)
    torch.save({
        'params': raw.state_dict(),
        'params_ema': ema.state_dict(),
        'network_g': TINY
    }, tmp_path / 'net_g_1000.pth')
    net, network_opt = load_network(tmp_path / 'net_g_1000.pth', preset='base')
    assert network_opt == TINY_V1
    assert _same_parameters(net, ema) and not _same_parameters(net, raw)
    assert not any(p.requires_grad for p in net.parameters())


def test_network_from_experiment_option_file_then_preset(tmp_path, tiny_sdnet, checkpoint_writer):
    models = tmp_path / 'experiments' / 'run' / 'models'
    models.mkdir(parents=True)
    ckpt = checkpoint_writer(tiny_sdnet(), models / 'net_g_5.pth', keys=('params', ))
    # without network_g and option file, only the fallback preset tells the architecture
    with pytest.raises(ValueError, match='do not fit'):
        load_weights(ckpt) and load_network(ckpt, preset='base')
    assert load_network(ckpt, preset='tiny')[1] == TINY_V1
    (models.parent / 'train_run.yml').write_text('name: run\nnetwork_g:\n  type: SDNet\n  preset: tiny\n')
    assert load_network(ckpt, preset='base')[1] == TINY_V1


def test_bad_weights_files_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_weights(tmp_path / 'missing.pth')
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='cannot read weights') as error:
        load_weights(tmp_path / 'text.pth')
    assert '\n' not in str(error.value)
    torch.save({'iter': 3}, tmp_path / 'state.pth')
    with pytest.raises(ValueError, match='no params_ema / params'):
        load_weights(tmp_path / 'state.pth')


def test_export_writes_float16_params_that_reproduce_the_network(tmp_path, tiny_weights):
    size = export_weights(tiny_weights, tmp_path / 'shipped' / 'sdnet_tiny.pth')
    shipped = torch.load(tmp_path / 'shipped' / 'sdnet_tiny.pth', weights_only=True)
    assert size == (tmp_path / 'shipped' / 'sdnet_tiny.pth').stat().st_size
    assert set(shipped) == {'params', 'network_g'} and shipped['network_g'] == TINY_V1
    assert all(v.dtype == torch.float16 for v in shipped['params'].values() if v.is_floating_point())
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        reference = load_network(tiny_weights)[0](x)
        exported = load_network(tmp_path / 'shipped' / 'sdnet_tiny.pth')[0](x)
    assert (exported - reference).abs().max() < 1e-2
    assert not list((tmp_path / 'shipped').glob('.*partial*'))


def _forward_with_offsets(net):

    def forward(x):
        out, offsets = net(x, return_offsets=True)
        return {'image': (out, 1), 'offset': (offsets[0]['offset'], offsets[0]['stride'])}

    return forward


def test_tiled_output_equals_untiled_output(tiny_sdnet):
    net = tiny_sdnet(offset_std=0.1)
    torch.manual_seed(0)
    # smooth random content at an odd size, so tiles end unaligned at the image border
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 18, 22), size=(97, 118), mode='bicubic').clamp(0, 1)
    forward = _forward_with_offsets(net)
    with torch.no_grad():
        whole = tiled_forward(forward, image, tile=None)
        tiled = tiled_forward(forward, image, tile=48, overlap=32)
        no_context = tiled_forward(forward, image, tile=48, overlap=4, blend=4)
    offsets = whole['offset']
    assert offsets.abs().max() > 1  # the sampling points really moved (level pixels, stride 4)
    assert tiled['image'].shape == whole['image'].shape and tiled['offset'].shape == offsets.shape
    assert (tiled['image'] - whole['image']).abs().max() < 1e-4
    assert (tiled['offset'] - offsets).abs().max() < 1e-3
    # the comparison can fail: without context the seams show
    assert (no_context['image'] - whole['image']).abs().max() > 1e-2


def test_tile_cores_cover_the_image_on_aligned_starts():
    for length, tile in ((141, 56), (64, 64), (5, 4), (1000, 333)):
        cores = inference._tile_starts(length, tile)
        assert cores[0][0] == 0 and cores[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
        assert all(start % TILE_ALIGN == 0 and end - start <= tile + TILE_ALIGN for start, end in cores)


def test_auto_tile_size_follows_free_memory(monkeypatch, tiny_sdnet):
    net = tiny_sdnet()  # 16 full-resolution features: 32 * 16 * 4 bytes per pixel in float32
    monkeypatch.setattr(inference, 'available_memory', lambda device: 2048 * 1000**2 / 0.4)
    assert auto_tile_size(net, 'cpu', torch.float32, overlap=100) == 800
    assert auto_tile_size(net, 'cpu', torch.float16, overlap=100) == 1212
    monkeypatch.setattr(inference, 'available_memory', lambda device: 1000)
    assert auto_tile_size(net, 'cpu', torch.float32, overlap=100) == 64


@requires_cuda
def test_half_precision_on_cuda_matches_float32(tiny_weights):
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        reference = load_network(tiny_weights)[0](x)
        net, _ = load_network(tiny_weights, device='cuda', half=True)
        out = net(x.cuda().half()).float().cpu()
    assert next(net.parameters()).dtype == torch.float16
    assert (out - reference).abs().max() < 2e-2


def test_tiles_follow_the_network_padding_multiple():
    """A network that pads to multiples of 8 (four levels) gets tiles whose starts and sizes are multiples of 8."""
    seen = []

    def forward(x):
        seen.append(x.shape[-2:])
        return {'image': (x.clone(), 1)}

    image = torch.rand(1, 3, 77, 101)
    out = inference.tiled_forward(forward, image, tile=30, overlap=10, align=8)
    assert torch.allclose(out['image'], image)
    rows, columns = inference._tile_starts(77, 24, 8), inference._tile_starts(101, 24, 8)  # tile 30 -> 24
    assert all(start % 8 == 0 for start, _ in rows + columns) and rows[-1][1] == 77 and columns[-1][1] == 101
    assert len(seen) == len(rows) * len(columns)
    assert seen[0] == (24 + 16, 24 + 16)  # core and overlap (10 -> 16) in multiples of 8
