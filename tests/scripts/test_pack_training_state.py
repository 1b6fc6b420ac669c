"""Packed training states: everything a resume needs, in one file under a size limit."""
import os

import pytest
import torch

from sdnet_plugin.archs.sdnet_arch import SDNET_PRESET_VERSIONS
from sdnet_plugin.file_safety import save_torch
from sdnet_plugin.tools import pack_training_state as pack_script


def _experiment(folder, current_iter=30):
    torch.manual_seed(0)
    net, ema = torch.nn.Conv2d(16, 16, 3), torch.nn.Conv2d(16, 16, 3)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    for _ in range(3):
        net(torch.randn(2, 16, 8, 8)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    (folder / 'models').mkdir(parents=True)
    (folder / 'training_states').mkdir()
    save_torch({
        'params': net.state_dict(),
        'params_ema': ema.state_dict(),
        'network_g': {
            'type': 'X'
        }
    }, str(folder / 'models' / f'net_g_{current_iter}.pth'))
    state = {
        'epoch': 2,
        'iter': current_iter,
        'optimizers': [optimizer.state_dict()],
        'schedulers': [scheduler.state_dict()],
        'grad_scaler': {
            'scale': 1024.0
        }
    }
    older = folder / 'training_states' / f'{current_iter - 10}.state'
    save_torch(dict(state, iter=current_iter - 10), str(older))
    save_torch(state, str(folder / 'training_states' / f'{current_iter}.state'))
    return state, torch.load(folder / 'models' / f'net_g_{current_iter}.pth', weights_only=True)


def _moments(state):
    return [t for s in state['optimizers'][0]['state'].values() for k, t in s.items() if k != 'step']


def test_pack_keeps_float32_when_it_fits_and_unpacks_exactly(tmp_path, capsys):
    state, network = _experiment(tmp_path / 'exp')
    pack_script.main(['pack', str(tmp_path / 'exp'), str(tmp_path / 'packed.pth')])
    out = capsys.readouterr().out
    assert 'iteration 30 packed' in out and '(exact)' in out
    pack_script.main(['unpack', str(tmp_path / 'packed.pth'), str(tmp_path / 'resumed')])
    restored = torch.load(tmp_path / 'resumed' / 'training_states' / '30.state', weights_only=False)
    assert restored['iter'] == 30 and restored['epoch'] == 2 and restored['schedulers'] == state['schedulers']
    assert restored['grad_scaler'] == {'scale': 1024.0}  # whatever else the state holds travels along
    assert all(torch.equal(a, b) for a, b in zip(_moments(restored), _moments(state)))
    restored_net = torch.load(tmp_path / 'resumed' / 'models' / 'net_g_30.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert all(torch.equal(restored_net[key][k], v) for k, v in network[key].items())
    assert sorted(
        p.name for p in (tmp_path / 'resumed').rglob('*')) == ['30.state', 'models', 'net_g_30.pth', 'training_states']


def test_pack_lowers_the_precision_of_what_does_not_steer_training_first(tmp_path):
    state, network = _experiment(tmp_path / 'exp')
    from sdnet_plugin.train import pack_training_state, unpack_training_state
    exact = pack_training_state(str(tmp_path / 'exp'), str(tmp_path / 'a.pth'), max_mb=1)
    assert exact['precision'] == 'exact'
    limit = (exact['bytes'] - 2000) / 1e6  # the EMA copy (9.3 kB as float32) has to shrink
    assert pack_training_state(str(tmp_path / 'exp'), str(tmp_path / 'b.pth'), limit)['precision'] == 'ema16'
    small = pack_training_state(str(tmp_path / 'exp'), str(tmp_path / 'c.pth'), (exact['bytes'] - 6000) / 1e6)
    assert small['precision'] == 'ema16+moments_bf16' and small['bytes'] < exact['bytes'] - 6000
    unpack_training_state(str(tmp_path / 'c.pth'), str(tmp_path / 'resumed'))
    restored = torch.load(tmp_path / 'resumed' / 'training_states' / '30.state', weights_only=False)
    for a, b in zip(_moments(restored), _moments(state)):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-2, atol=0)
    restored_net = torch.load(tmp_path / 'resumed' / 'models' / 'net_g_30.pth', weights_only=True)
    assert all(torch.equal(restored_net['params'][k], v) for k, v in network['params'].items())  # exact
    with pytest.raises(ValueError, match='raise the limit'):
        pack_training_state(str(tmp_path / 'exp'), str(tmp_path / 'd.pth'), max_mb=0.001)
    assert not (tmp_path / 'd.pth').exists()
    with pytest.raises(SystemExit, match='no training state'):
        pack_script.main(['pack', str(tmp_path / 'nothing'), str(tmp_path / 'e.pth')])


class _Payload:
    """Unpickling it creates a folder: stands for code hidden in a training state."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker, )


@pytest.mark.parametrize('command', ['pack', 'unpack'])
def test_states_holding_code_are_refused_without_running_it(tmp_path, command):
    marker = tmp_path / 'code_ran'
    state, _ = _experiment(tmp_path / 'exp')
    evil = dict(state, optimizers=[_Payload(marker)])
    if command == 'pack':
        path = tmp_path / 'exp' / 'training_states' / '30.state'
        torch.save(evil, path)
        args = ['pack', str(tmp_path / 'exp'), str(tmp_path / 'packed.pth')]
    else:
        path = tmp_path / 'packed.pth'
        torch.save({'format': 'sdnet-training-state', 'precision': 'exact', 'state': evil, 'network': {}}, path)
        args = ['unpack', str(path), str(tmp_path / 'resumed')]
    with pytest.raises(
            SystemExit, match=f'error: cannot read {path}: it holds objects other than tensors and plain '
            r'values \(refused: loading would run code\)'):
        pack_script.main(args)
    assert not marker.exists() and not (tmp_path / 'resumed').exists()
    assert (command == 'unpack') == (tmp_path / 'packed.pth').exists()


@pytest.mark.parametrize('command', ['pack', 'unpack'])
def test_failed_writes_are_one_line_errors(tmp_path, monkeypatch, command):
    from sdnet_plugin import file_safety
    _experiment(tmp_path / 'exp')
    pack_script.main(['pack', str(tmp_path / 'exp'), str(tmp_path / 'packed.pth')])
    before = (tmp_path / 'packed.pth').read_bytes()
    monkeypatch.setattr(file_safety, 'save_torch', lambda obj, path: False)  # full disk: it warned and gave up
    args = ['pack', str(tmp_path / 'exp'), str(tmp_path / 'packed.pth')] if command == 'pack' else \
        ['unpack', str(tmp_path / 'packed.pth'), str(tmp_path / 'resumed')]
    with pytest.raises(SystemExit, match=r'^error: could not write .*(packed|net_g_30)\.pth \(see the warnings'):
        pack_script.main(args)
    assert (tmp_path / 'packed.pth').read_bytes() == before
    assert not list((tmp_path / 'resumed').rglob('*.*'))


def _sdnet_experiment(folder, network_opt, current_iter=12):
    """A BasicSR-layout experiment of an SDNet trained for two AdamW steps (optimizer over ``named_parameters``)."""
    from basicsr.archs import build_network
    torch.manual_seed(0)
    net = build_network(dict(network_opt))
    optimizer = torch.optim.AdamW([p for p in net.parameters()], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100)
    for _ in range(2):
        net(torch.rand(1, 3, 32, 32)).mean().backward()
        optimizer.step()
        scheduler.step()
    (folder / 'models').mkdir(parents=True)
    (folder / 'training_states').mkdir()
    ema = {k: v + 1 for k, v in net.state_dict().items()}
    save_torch({
        'params': net.state_dict(),
        'params_ema': ema,
        'network_g': dict(network_opt)
    }, str(folder / 'models' / f'net_g_{current_iter}.pth'))
    state = {
        'epoch': 1,
        'iter': current_iter,
        'optimizers': [optimizer.state_dict()],
        'schedulers': [scheduler.state_dict()],
        'cpu_seconds': 7.0,
        'wall_seconds': 9.0
    }
    save_torch(state, str(folder / 'training_states' / f'{current_iter}.state'))
    return net, optimizer


def test_carry_over_keeps_moments_by_name_drops_removed_blocks_and_starts_new_ones(tmp_path):
    from basicsr.archs import build_network
    light = {'type': 'SDNet', 'preset': 'light', 'preset_version': 1}
    old_net, old_optimizer = _sdnet_experiment(tmp_path / 'exp', light)
    old_params = dict(old_net.named_parameters())
    old_moments = {name: old_optimizer.state[p] for name, p in old_params.items()}
    # Without the full-resolution blocks, and with one more block at 1/2 resolution.
    changed = dict(light, num_block=[0, 2, 1, 28, 1], num_dec_block=[0, 1, 1, 1])
    (tmp_path / 'new.yml').write_text(
        'network_g:\n  type: SDNet\n  preset: light\n  preset_version: 1\n  num_block: [0, 2, 1, 28, 1]\n'
        '  num_dec_block: [0, 1, 1, 1]\n')
    pack_script.main(['carry', str(tmp_path / 'exp'), str(tmp_path / 'new'), '-opt', str(tmp_path / 'new.yml')])

    checkpoint = torch.load(tmp_path / 'new' / 'models' / 'net_g_12.pth', weights_only=True)
    state = torch.load(tmp_path / 'new' / 'training_states' / '12.state', weights_only=False)
    assert checkpoint['network_g'] == changed
    assert state['iter'] == 12 and state['cpu_seconds'] == 7.0 and state['schedulers'][0]['last_epoch'] == 2
    new_net = build_network(dict(checkpoint['network_g']))
    new_net.load_state_dict(checkpoint['params'])  # strict: exactly the new network's tensors
    new_params = dict(new_net.named_parameters())
    optimizer = torch.optim.AdamW(new_net.parameters(), lr=1e-3)
    optimizer.load_state_dict(state['optimizers'][0])  # the index layout torch checks
    dropped = [n for n in old_params if n not in new_params]
    added = [n for n in new_params if n not in old_params]
    assert dropped and all(n.startswith(('encoders.0.', 'decoders.3.')) for n in dropped)
    assert added and all(n.startswith('encoders.1.1.') for n in added)
    for name, p in new_params.items():
        if name in old_params:
            assert torch.equal(p, old_params[name]) and torch.equal(checkpoint['params_ema'][name], p + 1)
            assert torch.equal(optimizer.state[p]['exp_avg'], old_moments[name]['exp_avg'])
        else:
            assert not optimizer.state[p]  # fresh moments
            assert torch.equal(checkpoint['params_ema'][name], p)  # the new block's initialisation
    new_net(torch.rand(1, 3, 32, 32)).mean().backward()
    optimizer.step()  # the carried state steps

    # Options without a preset version mean the current one, and the carried checkpoint records it.
    (tmp_path / 'current.yml').write_text('network_g:\n  type: SDNet\n  preset: light\n  num_block: [1, 1, 1, 28, 1]\n'
                                          '  num_dec_block: [1, 1, 1, 1]\n')
    pack_script.main(['carry', str(tmp_path / 'exp'), str(tmp_path / 'cur'), '-opt', str(tmp_path / 'current.yml')])
    carried = torch.load(tmp_path / 'cur' / 'models' / 'net_g_12.pth', weights_only=True)
    assert carried['network_g']['preset_version'] == max(SDNET_PRESET_VERSIONS['light'])
    assert all(torch.equal(carried['params'][k], v) for k, v in old_net.state_dict().items())  # the same layout

    # Refused: an existing training state in the target, a changed shape, a checkpoint without network options.
    with pytest.raises(SystemExit, match='already holds a training state'):
        pack_script.main(['carry', str(tmp_path / 'exp'), str(tmp_path / 'new'), '-opt', str(tmp_path / 'new.yml')])
    (tmp_path / 'wide.yml').write_text('network_g:\n  type: SDNet\n  preset: light\n  num_feat: 16\n')
    with pytest.raises(SystemExit, match=r'^error: parameters changed shape, cannot carry them over: conv_first'):
        pack_script.main(['carry', str(tmp_path / 'exp'), str(tmp_path / 'wide'), '-opt', str(tmp_path / 'wide.yml')])
    assert not (tmp_path / 'wide').exists()
    _experiment(tmp_path / 'plain')
    bare = torch.load(tmp_path / 'plain' / 'models' / 'net_g_30.pth', weights_only=True)
    save_torch({k: v for k, v in bare.items() if k != 'network_g'}, str(tmp_path / 'plain' / 'models' / 'net_g_30.pth'))
    with pytest.raises(SystemExit, match='stores no network options'):
        pack_script.main(['carry', str(tmp_path / 'plain'), str(tmp_path / 'x'), '-opt', str(tmp_path / 'new.yml')])
