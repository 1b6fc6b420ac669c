"""SDNet's light presets (four levels of gated blocks), the plain-conv SVD ablation, and versioned presets."""
import math

import pytest
import torch
import torch.nn.functional as F

from sdnet_plugin.archs import sdnet_arch
from sdnet_plugin.archs.sdnet_arch import (SDNET_PRESETS, GatedBlock, NormGatedBlock, SDNet, pin_preset_version,
                                           simple_gate)
from sdnet_plugin.inference import load_network, load_weights

LIGHT = ['light_s', 'light_m', 'light_l']


def randomize(net, std=0.05):
    """Trained-like state: non-zero residual scales, output layer and offset heads."""
    torch.manual_seed(1)
    for module in net.modules():
        if isinstance(module, GatedBlock):
            torch.nn.init.normal_(module.scale, std=0.5)
    torch.nn.init.normal_(net.conv_last.weight, std=std)
    for svd in net.svd.values():
        if hasattr(svd, 'dcn'):
            torch.nn.init.normal_(svd.dcn.conv_offset[-1].weight, std=std)
    return net


@pytest.mark.parametrize('preset', LIGHT)
def test_light_presets_have_four_levels_and_coarse_svd_modules(preset):
    net = randomize(SDNet(preset, dcn_backend='torch').eval())
    assert net.num_levels == 4 and net.pad_multiple == 8 and net.block_type == 'gated'
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        out, offsets = net(x, return_offsets=True)
        assert torch.equal(out, net(x))
    assert out.shape == x.shape
    assert [(o['level'], o['stride']) for o in offsets] == [(3, 8), (2, 4)]  # coarsest first
    for item in offsets:
        assert item['offset'].shape == (2, 18, math.ceil(37 / item['stride']), math.ceil(53 / item['stride']))
    # most of the computation sits at the coarsest level
    blocks = [sum(isinstance(m, GatedBlock) for m in stage.modules()) for stage in net.encoders] + \
        [sum(isinstance(m, GatedBlock) for m in net.bottleneck.modules())]
    assert blocks[-1] > sum(blocks[:-1])


@pytest.mark.parametrize('preset', LIGHT)
def test_untrained_light_network_returns_its_input(preset):
    x = torch.rand(1, 3, 19, 30)
    with torch.no_grad():
        assert torch.equal(SDNet(preset, dcn_backend='torch')(x), x)


def test_gated_block_starts_as_identity_and_trains_every_parameter():
    block = GatedBlock(8)
    x = torch.randn(2, 8, 9, 11)
    assert torch.equal(block(x), x)
    torch.nn.init.normal_(block.scale)
    block(x).square().mean().backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in block.parameters())


def test_light_training_step_updates_every_parameter():
    net = randomize(SDNet('light_s', dcn_backend='torch').train())
    out, offsets = net(torch.rand(2, 3, 32, 32), return_offsets=True)
    (out.square().mean() + sum(item['offset'].square().mean() for item in offsets)).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@pytest.mark.parametrize('preset', ['base', 'light_m'])
def test_plain_svd_replaces_deformable_convs_by_plain_ones(preset):
    net = SDNet(preset, plain_svd=True, dcn_backend='torch')
    assert sorted(net.svd) == sorted(str(lv) for lv in SDNET_PRESETS[preset]['svd_levels'])
    assert not any('dcn' in name for name, _ in net.named_parameters())
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        out, offsets = net(x, return_offsets=True)
    assert out.shape == x.shape and offsets == []


def test_preset_version_defaults_to_the_current_one_and_unknown_versions_fail_in_one_line():
    assert SDNet('base').preset_version == 1 and SDNet('base', preset_version=1).preset_version == 1
    with pytest.raises(ValueError, match="SDNet preset 'base' has no version 7") as error:
        SDNet('base', preset_version=7)
    assert '\n' not in str(error.value)


def test_checkpoints_without_a_version_rebuild_version_1_when_the_preset_changes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old = SDNet('tiny', dcn_backend='torch')
    path = tmp_path / 'old.pth'
    torch.save({'params': old.state_dict(), 'network_g': {'type': 'SDNet', 'preset': 'tiny'}}, path)
    # a later release gives 'tiny' a new meaning as version 2
    versions = {
        **sdnet_arch.SDNET_PRESET_VERSIONS, 'tiny': {
            **sdnet_arch.SDNET_PRESET_VERSIONS['tiny'], 2: dict(SDNET_PRESETS['light_s'])
        }
    }
    monkeypatch.setattr(sdnet_arch, 'SDNET_PRESET_VERSIONS', versions)
    assert SDNet('tiny').preset_version == 2 and SDNet('tiny').num_levels == 4
    _, network_opt = load_weights(path)
    assert network_opt == {'type': 'SDNet', 'preset': 'tiny', 'preset_version': 1}
    net, _ = load_network(path)
    assert net.num_levels == 3 and net.preset_version == 1
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), old.eval()(x))
    # a file from a newer release fails with one clear line
    torch.save({
        'params': old.state_dict(),
        'network_g': {
            'type': 'SDNet',
            'preset': 'tiny',
            'preset_version': 3
        }
    }, path)
    with pytest.raises(ValueError, match="SDNet preset 'tiny' has no version 3"):
        load_network(path)


def test_pin_preset_version_leaves_other_networks_and_explicit_versions_alone():
    assert pin_preset_version({'type': 'SDNet', 'preset': 'base'})['preset_version'] == 1
    assert pin_preset_version({'type': 'SDNet', 'preset_version': 2})['preset_version'] == 2
    assert pin_preset_version({'type': 'NAFNet'}) == {'type': 'NAFNet'}


def test_default_preset_is_light_and_files_from_before_versions_mean_base(tmp_path):
    net = SDNet(dcn_backend='torch')
    assert net.preset == sdnet_arch.DEFAULT_PRESET == 'light' and net.block_type == 'norm_gated'
    # options stored without preset and version were written when the default was base
    assert pin_preset_version({'type': 'SDNet'}) == {'type': 'SDNet', 'preset': 'base', 'preset_version': 1}
    assert pin_preset_version({'type': 'SDNet', 'preset': 'light', 'preset_version': 1})['preset'] == 'light'
    torch.manual_seed(0)
    base = SDNet('base', dcn_backend='torch')
    path = tmp_path / 'old.pth'
    torch.save({'params': base.state_dict(), 'network_g': {'type': 'SDNet'}}, path)
    loaded, network_opt = load_network(path)
    assert network_opt['preset'] == 'base' and loaded.block_type == 'residual'


@pytest.mark.parametrize('batch', [1, 2])
def test_norm_gated_block_folds_its_scales_into_weights_without_autograd_exactly(batch):
    torch.manual_seed(0)
    block = NormGatedBlock(8).double()
    for scale in (block.beta, block.gamma):
        torch.nn.init.normal_(scale)  # the scales start at zero: make them matter
    x = torch.randn(batch, 8, 12, 10, dtype=torch.float64)
    with torch.no_grad():  # the block's function written out, unfolded
        y = simple_gate(block.dw(block.pw1(block.norm1(x))))
        expected = x + block.pw2(y * block.attention(F.adaptive_avg_pool2d(y, 1))) * block.beta
        expected = expected + block.ffn_out(simple_gate(block.ffn_in(block.norm2(expected)))) * block.gamma
        folded = block(x)
    trained = block(x)  # with autograd: the unfolded graph
    assert trained.requires_grad and not folded.requires_grad
    assert torch.allclose(folded, expected, rtol=0, atol=1e-12)
    assert torch.allclose(trained.detach(), expected, rtol=0, atol=1e-12)
    with torch.inference_mode():
        assert torch.allclose(block(x), expected, rtol=0, atol=1e-12)
