import math

import pytest
import torch

from sdnet_plugin.archs.sdnet_arch import SDNET_PRESETS, SDNet

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def make_net(preset='tiny', **kwargs):
    """SDNet with a random output layer (it starts at zero), so the output depends on every layer."""
    torch.manual_seed(0)
    net = SDNet(preset, dcn_backend='torch', **kwargs).eval()
    torch.nn.init.normal_(net.conv_last.weight, std=0.05)
    return net


def randomize_offset_heads(net, std=0.05):
    """Trained-like state: non-zero offsets and masks, so the tests see the deformable path at work."""
    for svd in net.svd.values():
        torch.nn.init.normal_(svd.dcn.conv_offset[-1].weight, std=std)


@pytest.mark.parametrize('size', [(37, 53), (1, 1), (5, 7), (16, 12)])
def test_output_and_offsets_have_the_right_shapes(size):
    net = make_net()
    randomize_offset_heads(net)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out, offsets = net(x, return_offsets=True)
        plain = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, plain)  # the offsets come from the same pass
    levels = SDNET_PRESETS['tiny']['svd_levels']
    assert [o['level'] for o in offsets] == sorted(levels, reverse=True)  # coarsest first
    for item in offsets:
        stride = 2**item['level']
        assert item['stride'] == stride and item['kernel_size'] == 3 and item['dilation'] == 1
        assert item['offset'].shape == (2, 18, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_base_preset_offsets_at_every_level():
    net = make_net('base', deform_kernel_size=5, deform_dilation=2)
    with torch.no_grad():
        _, offsets = net(torch.rand(1, 3, 9, 10), return_offsets=True)
    assert [(o['stride'], o['kernel_size'], o['dilation']) for o in offsets] == [(4, 5, 2), (2, 5, 2), (1, 5, 2)]
    assert [tuple(o['offset'].shape) for o in offsets] == [(1, 50, 3, 3), (1, 50, 5, 5), (1, 50, 9, 10)]


def test_global_residual_returns_input_when_last_conv_is_zero():
    net = make_net()
    randomize_offset_heads(net)
    torch.nn.init.zeros_(net.conv_last.weight)
    torch.nn.init.zeros_(net.conv_last.bias)
    x = torch.rand(1, 3, 13, 22)
    with torch.no_grad():
        assert torch.equal(net(x), x)


def test_bfloat16_network_keeps_the_float32_input_and_residual():
    net = make_net()
    randomize_offset_heads(net)
    x = torch.rand(1, 3, 13, 22)
    with torch.no_grad():
        reference = net(x)
        net = net.bfloat16()
        out = net(x)
        assert out.dtype == torch.float32  # computed in bfloat16, returned in the input's dtype
        assert 0 < (out - reference).abs().max() < 0.05
        torch.nn.init.zeros_(net.conv_last.weight)
        torch.nn.init.zeros_(net.conv_last.bias)
        assert torch.equal(net(x), x)  # the global residual is added in float32, not rounded to bfloat16
        assert net(x.bfloat16()).dtype == torch.bfloat16


def test_untrained_network_returns_its_input():
    x = torch.rand(1, 3, 13, 22)
    with torch.no_grad():
        assert torch.equal(SDNet('tiny', dcn_backend='torch')(x), x)


def test_different_output_channels_drop_the_residual():
    net = make_net(num_out_ch=1)
    torch.nn.init.zeros_(net.conv_last.weight)
    torch.nn.init.zeros_(net.conv_last.bias)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 1, 8, 8) and torch.all(out == 0)


@pytest.mark.parametrize('preset', list(SDNET_PRESETS))
def test_svd_modules_start_as_plain_convolutions(preset):
    net = make_net(preset)
    with torch.no_grad():
        _, offsets = net(torch.rand(1, 3, 12, 20), return_offsets=True)
    assert len(offsets) == len(SDNET_PRESETS[preset]['svd_levels']) == len(net.svd)
    assert all(torch.all(item['offset'] == 0) for item in offsets)
    for svd in net.svd.values():
        feat = torch.randn(1, svd.dcn.weight.shape[1], 6, 7)
        with torch.no_grad():
            out, offset, mask = svd.dcn(feat)
        expected = torch.nn.functional.conv2d(feat, svd.dcn.weight, padding=1) * 0.5 + svd.dcn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_sampling_reaches_far_beyond_the_kernel():
    """Blur spans tens of pixels: a head predicting dx = 25 must sample 25 feature pixels away, unclamped."""
    net = make_net()
    dcn = net.svd['1'].dcn
    channels = dcn.weight.shape[1]
    with torch.no_grad():
        dcn.conv_offset[-1].bias[1:18:2] = 25.0  # every kernel point: dy = 0, dx = +25
        feat = torch.zeros(1, channels, 5, 40)
        feat[:, :, 2, 31] = 1.0  # impulse 25 pixels right of column 6 (centre point of the kernel)
        out, offset, _ = dcn(feat)
        assert torch.all(offset[:, 1::2] == 25.0)
        response = (out - dcn.bias.view(1, -1, 1, 1)).abs().sum(1)[0]
        assert response[2, 6] > 0
        assert response[2, 1:12].nonzero().flatten().tolist() == [4, 5, 6]  # only columns 5..7 see it
        # through the whole network the predicted offsets are returned as they are
        net.svd['2'].dcn.conv_offset[-1].bias[0:18:2] = -30.0
        _, offsets = net(torch.rand(1, 3, 16, 16), return_offsets=True)
    by_level = {item['level']: item['offset'] for item in offsets}
    assert torch.all(by_level[2][:, 0::2] == -30.0)


def test_sdnet_output_depends_on_far_pixels_when_offsets_point_there():
    net = make_net('tiny', svd_levels=(0, ), num_block=(1, 1, 1))
    with torch.no_grad():
        net.svd['0'].dcn.conv_offset[-1].bias[1:18:2] = 40.0
    x = torch.zeros(1, 3, 8, 128, requires_grad=True)
    net(x)[0, :, 4, 10].sum().backward()
    # the network's plain convolutions see at most a few tens of pixels; column 50 is reached only by the SVD module
    assert x.grad[0, :, :, 48:53].abs().sum() > 0
    net_plain = make_net('tiny', svd_levels=(0, ), num_block=(1, 1, 1))
    x_plain = torch.zeros(1, 3, 8, 128, requires_grad=True)
    net_plain(x_plain)[0, :, 4, 10].sum().backward()
    assert x_plain.grad[0, :, :, 48:53].abs().sum() == 0


def test_parameter_counts_of_presets():
    counts = {name: sum(p.numel() for p in SDNet(name, dcn_backend='torch').parameters()) for name in SDNET_PRESETS}
    assert counts == {
        'tiny': 426089,
        'small': 1205268,
        'base': 2455252,
        'light_s': 1096329,
        'light_m': 1797769,
        'light_l': 3977649,
        'light': 1201921  # version 2; version 1: 1203345
    }
    assert sum(p.numel() for p in SDNet('light', preset_version=1, dcn_backend='torch').parameters()) == 1203345
    assert max(counts.values()) < 5e6  # light-weighted class of the paper


def test_preset_settings_can_be_overridden():
    net = SDNet('tiny', num_feat=8, num_block=(1, 1, 1), svd_levels=(0, 2), dcn_backend='torch')
    assert net.conv_first.out_channels == 8 and sorted(net.svd) == ['0', '2']
    assert len(SDNet('base', svd_levels=()).svd) == 0


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match='unknown SDNet preset'):
        SDNet('huge')
    with pytest.raises(ValueError, match='num_block needs 3 entries'):
        SDNet('tiny', num_block=(1, 1))
    with pytest.raises(ValueError, match='svd_levels'):
        SDNet('tiny', svd_levels=(3, ))


def test_training_step_updates_every_parameter():
    net = make_net().train()
    randomize_offset_heads(net)
    out, offsets = net(torch.rand(2, 3, 12, 12), return_offsets=True)
    (out.square().mean() + sum(item['offset'].square().mean() for item in offsets)).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@requires_cuda
def test_cuda_matches_cpu():
    net = make_net('small')
    randomize_offset_heads(net)
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        expected = net(x)
        out = net.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
