import json

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr

import sdnet_plugin  # noqa: F401  (must precede basicsr imports)
from sdnet_plugin import evaluation as eval_heldout
from sdnet_plugin.archs.sdnet_arch import SDNet


def make_tree(root, sequences=2, size=24, seed=0):
    """GoPro layout with a sharp random image and a box-blurred copy per sequence."""
    rng = np.random.default_rng(seed)
    for i in range(sequences):
        sharp = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        blurry = cv2.blur(sharp, (5, 1))
        for folder, image in (('sharp', sharp), ('blur', blurry)):
            path = root / f'SEQ_{i}' / folder
            path.mkdir(parents=True)
            cv2.imwrite(str(path / '000000.png'), image)
    return root


def save_checkpoint(path, net, network_g=None, key='params'):
    content = {key: net.state_dict()}
    if network_g is not None:
        content['network_g'] = network_g
    torch.save(content, path)


class Identity(torch.nn.Module):

    def forward(self, x):
        return x


def test_blurry_metrics_match_basicsr_and_identity_network_gains_nothing(tmp_path):
    make_tree(tmp_path / 'data')
    pairs = eval_heldout.find_pairs(str(tmp_path / 'data'))
    assert [name for name, _, _ in pairs] == ['SEQ_0/000000', 'SEQ_1/000000']
    result = eval_heldout.evaluate(Identity(), pairs)
    expected = np.mean([calculate_psnr(cv2.imread(b), cv2.imread(s), 0) for _, b, s in pairs])
    assert result['count'] == 2
    assert result['blurry']['psnr'] == pytest.approx(expected)
    assert result['restored']['psnr'] == pytest.approx(expected)
    assert result['gain']['psnr'] == pytest.approx(0, abs=1e-9)
    assert 0 < result['blurry']['ssim'] < 1


def test_checkpoint_architecture_and_ema_weights_are_evaluated(tmp_path):
    net, ema = SDNet(preset='tiny'), SDNet(preset='tiny')
    for p in ema.parameters():
        torch.nn.init.normal_(p, std=0.01)
    path = tmp_path / 'net_g_10.pth'
    torch.save(
        {
            'params': net.state_dict(),
            'params_ema': ema.state_dict(),
            'network_g': {
                'type': 'SDNet',
                'preset': 'tiny'
            }
        }, path)
    loaded, network_opt = eval_heldout.load_network(str(path), preset='base')  # what the command line uses
    assert network_opt == {'type': 'SDNet', 'preset': 'tiny', 'preset_version': 1}
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ema.state_dict()[name])


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    make_tree(tmp_path / 'data', sequences=1)
    path = tmp_path / 'net.pth'
    save_checkpoint(path, SDNet(preset='tiny'), {'type': 'SDNet', 'preset': 'tiny'})
    out_json = tmp_path / 'result.json'
    eval_heldout.main(
        ['--weights',
         str(path), '--data',
         str(tmp_path / 'data'), '--device', 'cpu', '--json',
         str(out_json)])
    printed = capsys.readouterr().out
    assert '| blurry vs sharp |' in printed and '| gain |' in printed
    result = json.loads(out_json.read_text())
    assert result['count'] == 1 and result['network_g']['preset'] == 'tiny'
    assert result['gain']['psnr'] == pytest.approx(result['restored']['psnr'] - result['blurry']['psnr'])


def test_bad_inputs_give_one_line_errors(tmp_path):
    net_path = tmp_path / 'net.pth'
    save_checkpoint(net_path, SDNet(preset='tiny'), {'type': 'SDNet', 'preset': 'tiny'})
    with pytest.raises(SystemExit, match='no images in'):
        eval_heldout.main(['--weights', str(net_path), '--data', str(tmp_path / 'empty')])
    make_tree(tmp_path / 'data', sequences=1)
    (tmp_path / 'data' / 'SEQ_0' / 'sharp' / '000000.png').unlink()
    with pytest.raises(SystemExit, match='has no sharp image'):
        eval_heldout.main(['--weights', str(net_path), '--data', str(tmp_path / 'data')])
    with pytest.raises(SystemExit, match='does not exist'):
        eval_heldout.main(['--weights', str(tmp_path / 'missing.pth'), '--data', str(tmp_path / 'data')])


class FlowFollower(torch.nn.Module):
    """Identity whose 3x3 sampling points (stride 1 and 2) lie exactly on the trajectories of a given flow."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x, return_offsets=False):
        from sdnet_plugin.losses.flow_offset_loss import flow_to_offsets
        offsets = [{
            'offset': flow_to_offsets(self.flow, 3, 1, s),
            'stride': s,
            'kernel_size': 3,
            'dilation': 1,
            'level': level
        } for level, s in ((1, 2), (0, 1))]
        return (x, offsets) if return_offsets else x


def test_offset_error_is_zero_on_the_flow_and_grid_level_for_an_untrained_net(tmp_path):
    from sdnet_plugin.data.flow_io import write_flow
    make_tree(tmp_path / 'data', sequences=1)
    flow = np.zeros((24, 32, 4), np.float32)
    flow[..., 0], flow[..., 2] = -3.0, 3.0  # horizontal motion of 6 px over the exposure
    (tmp_path / 'data' / 'SEQ_0' / 'flow').mkdir()
    write_flow(str(tmp_path / 'data' / 'SEQ_0' / 'flow' / '000000.png'), flow)
    pairs = eval_heldout.find_pairs(str(tmp_path / 'data'))

    follower = FlowFollower(torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0))
    result = eval_heldout.evaluate(follower, pairs, offset_error=True)
    assert result['offset_error']['learned'] == pytest.approx(0, abs=1e-6)
    assert result['offset_error']['grid'] > 0.5
    untrained = eval_heldout.evaluate(SDNet(preset='tiny').eval(), pairs, offset_error=True)  # offsets start at 0
    assert untrained['offset_error']['learned'] == pytest.approx(untrained['offset_error']['grid'])
    assert 'regular grid' in eval_heldout.format_table(result)

    plain = eval_heldout.evaluate(SDNet(preset='tiny', svd_levels=()).eval(), pairs, offset_error=True)
    assert 'offset_error' not in plain and 'offset error' not in eval_heldout.format_table(plain)

    (tmp_path / 'data' / 'SEQ_0' / 'flow' / '000000.png').unlink()
    with pytest.raises(FileNotFoundError, match='flow file not found'):
        eval_heldout.evaluate(follower, pairs, offset_error=True)


def test_bfloat16_is_compared_with_float32(tmp_path):
    """A bfloat16 run reports the float32 gain exactly, and outputs that agree closely but not bit for bit."""
    make_tree(tmp_path / 'data')
    pairs = eval_heldout.find_pairs(str(tmp_path / 'data'))
    torch.manual_seed(0)
    net = SDNet('tiny', dcn_backend='auto').eval()
    torch.nn.init.normal_(net.conv_last.weight, std=0.05)
    result = eval_heldout.evaluate(net, pairs, dtype=torch.bfloat16, compare_fp32=True)
    fp32 = eval_heldout.evaluate(net, pairs)
    assert result['fp32']['gain_psnr'] == pytest.approx(fp32['gain']['psnr'])
    assert 35 < result['fp32']['min_agreement_psnr'] <= result['fp32']['agreement_psnr'] < float('inf')
    assert 'against float32: outputs agree at' in eval_heldout.format_table(result)


def make_run(root, costs):
    """An experiment folder with a tiny SDNet checkpoint and a training state per ``{iter: cpu_seconds or None}``
    (None: a state without cost, as runs before cost accounting wrote)."""
    (root / 'models').mkdir(parents=True)
    (root / 'training_states').mkdir()
    for it, cpu in costs.items():
        torch.manual_seed(it)
        net = SDNet(preset='tiny', dcn_backend='torch')
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.01)
        save_checkpoint(root / 'models' / f'net_g_{it}.pth', net, {'type': 'SDNet', 'preset': 'tiny'})
        state = {'epoch': 0, 'iter': it, 'optimizers': [], 'schedulers': []}
        if cpu is not None:
            state.update(cpu_seconds=cpu, wall_seconds=2 * cpu)
        torch.save(state, root / 'training_states' / f'{it}.state')
    return root


def test_heldout_curve_scores_checkpoints_against_cpu_hours_and_caches(tmp_path, monkeypatch, capsys):
    make_tree(tmp_path / 'data')
    run = make_run(tmp_path / 'run', {2: None, 4: 360.0, 6: 720.0, 8: 1080.0})
    assert [row['iter'] for row in eval_heldout.run_checkpoints(str(run))] == [4, 6, 8]  # 2 records no cost
    cache = str(tmp_path / 'curve.json')
    rows = eval_heldout.heldout_curve(str(run), str(tmp_path / 'data'), every=4, cache=cache)
    assert [row['iter'] for row in rows] == [4, 8]  # multiples of 4, and the newest
    assert [row['cpu_hours'] for row in rows] == pytest.approx([0.1, 0.3])
    assert [row['wall_hours'] for row in rows] == pytest.approx([0.2, 0.6])
    net, _ = eval_heldout.load_network(rows[0]['weights'])
    direct = eval_heldout.evaluate(net, eval_heldout.find_pairs(str(tmp_path / 'data')))
    assert rows[0]['gain']['psnr'] == pytest.approx(direct['gain']['psnr'])
    assert 'offset_error' not in rows[0]  # no flows in the folder

    calls = []
    monkeypatch.setattr(eval_heldout, 'evaluate', lambda *a, **k: calls.append(a) or direct)
    again = eval_heldout.heldout_curve(str(run), str(tmp_path / 'data'), every=2, cache=cache)
    assert [row['iter'] for row in again] == [4, 6, 8] and len(calls) == 1  # only iteration 6 is new
    assert again[0] == rows[0]

    eval_heldout.curve_main(
        [str(run), '--data',
         str(tmp_path / 'data'), '--every', '2', '--json', cache, '--precision', 'fp32'])
    out = capsys.readouterr().out
    assert '| 6 | 0.20 | 0.40 |' in out and (run / 'heldout_curve.png').stat().st_size > 0
    with pytest.raises(SystemExit, match='records its CPU time'):
        eval_heldout.curve_main([str(make_run(tmp_path / 'old', {2: None})), '--data', str(tmp_path / 'data')])


def test_heldout_curve_follows_a_run_carried_over_into_another_folder(tmp_path, monkeypatch, capsys):
    make_tree(tmp_path / 'data')
    first = make_run(tmp_path / 'first', {4: 360.0, 8: 720.0})
    second = tmp_path / 'second'  # the same run from iteration 8 on, with a network that lost a block
    (second / 'models').mkdir(parents=True)
    (second / 'training_states').mkdir()
    for it, cpu in ((8, 720.0), (12, 1080.0)):
        net = SDNet(preset='tiny', num_block=(1, 1, 1), dcn_backend='torch')
        save_checkpoint(second / 'models' / f'net_g_{it}.pth', net, {
            'type': 'SDNet',
            'preset': 'tiny',
            'num_block': [1, 1, 1]
        })
        torch.save({'iter': it, 'cpu_seconds': cpu, 'wall_seconds': cpu}, second / 'training_states' / f'{it}.state')
    built = []
    monkeypatch.setattr(
        eval_heldout, 'evaluate', lambda net, *a, **k: built.append(len(net.state_dict())) or {
            'blurry': {},
            'restored': {
                'psnr': 1.0,
                'ssim': 0.5
            },
            'gain': {
                'psnr': 0.1,
                'ssim': 0.01
            }
        })
    eval_heldout.curve_main([str(first), str(second), '--data', str(tmp_path / 'data'), '--every', '100'])
    out = capsys.readouterr().out
    assert [
        line.split('|')[1].strip() for line in out.splitlines()
        if line.startswith('| ') and line.split('|')[1].strip().isdigit()
    ] == ['8', '8', '12']  # no multiple of 100: where the run was carried over, and the newest
    assert built[0] > built[1] == built[2]  # each checkpoint rebuilt with its own network options
    assert (second / 'heldout_curve.png').stat().st_size > 0 and (second / 'heldout_curve.json').is_file()
