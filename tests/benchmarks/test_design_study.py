"""The design-study script: every arm trains, batches are shared, halving, resume after a kill, the report."""
import argparse
import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from sdnet_plugin.data.synthesis import synthesize_dataset

SMALL = ('light_s', 'light_m_plain', 'nafnet_light')
ARM_NAMES = [
    'base', 'base_plain', 'base_noflow', 'base_ordered', 'light_s', 'light_m', 'light_l', 'light_m_noflow',
    'light_m_plain', 'light_m_psnr', 'light_m_charb', 'light_m_fft', 'light_m_p64b32', 'light_m_p256b2', 'light',
    'light_noflow', 'light_warm', 'light_fine', 'light_fine_noflow', 'light_w01', 'light_fine_w01', 'light_lean_w01',
    'light_lean_noflow', 'light_lean_warm', 'nafnet_light', 'nafnet_lean', 'nafnet32'
]


@pytest.fixture(scope='module')
def study(load_benchmark):
    return load_benchmark('design_study')


@pytest.fixture(autouse=True)
def torch_dcn(monkeypatch):
    """The pure-PyTorch DCN backend, so that no test spends its time choosing the fastest one."""
    monkeypatch.setenv('SDNET_DCN_BACKEND', 'torch')


@pytest.fixture
def small_arms(study, monkeypatch):
    """The study's arms on 2 crops of 32x32 per step, so that a smoke run takes seconds."""
    for name, arm in study.ARMS_BY_NAME.items():
        monkeypatch.setitem(study.ARMS_BY_NAME, name, dataclasses.replace(arm, patch=32, batch=2))


@pytest.fixture(scope='module')
def study_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('study_data')
    synthesize_dataset(str(root / 'train'), 4, size=(48, 48), seed=0, progress=False)
    synthesize_dataset(str(root / 'eval'), 2, size=(40, 32), seed=1, progress=False)
    return str(root)


def options(data, work, *extra):
    return ['--data', data, '--work', str(work), '--threads', '1', '--precision', 'fp32', '--eval-every', '0', *extra]


def read_evals(work, name):
    return json.loads((Path(work) / name / 'evals.json').read_text())


def random_batch(size=32, batch=2):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, batch, 3, size, size, generator=gen)
    return {'lq': images[0], 'gt': images[1], 'flow': 2 * torch.randn(batch, 4, size, size, generator=gen)}


@pytest.mark.parametrize('name', ARM_NAMES)
def test_every_arm_builds_and_trains_one_step(study, tmp_path, name):
    run = study.ArmRun(study.ARMS_BY_NAME[name], argparse.Namespace(work=str(tmp_path), precision='fp32', seed=0), 1)
    run.counters['cpu_seconds'] = 6.0  # past the warm-up: a real learning rate
    before = [p.detach().clone() for p in run.net.parameters()]
    loss = run.step(random_batch())
    assert loss is not None and loss == loss
    assert any(not torch.equal(a, b) for a, b in zip(before, run.net.parameters()))
    assert run.arm.has_svd == (name.startswith(('base', 'light')) and not name.endswith('plain'))


def test_the_study_covers_every_arm_of_the_design(study):
    assert [arm.name for arm in study.ARMS] == ARM_NAMES
    assert {arm.patch**2 * arm.batch for arm in study.ARMS} == {8 * 128 * 128}  # equal pixels per step


def test_bf16_step_runs_where_the_cpu_has_native_bf16(study, tmp_path):
    if not study.native_bf16():
        pytest.skip('no native bfloat16 on this CPU')
    for name in ('base', 'light_s'):
        run = study.ArmRun(study.ARMS_BY_NAME[name], argparse.Namespace(work=str(tmp_path), precision='bf16', seed=0),
                           1)
        run.counters['cpu_seconds'] = 6.0
        assert run.step(random_batch()) is not None


def test_batches_are_the_same_for_every_arm_and_change_with_the_iteration(study, study_data):
    arm = dataclasses.replace(study.ARMS_BY_NAME['light_s'], patch=32, batch=3)
    first, second = study.training_set(study_data, arm), study.training_set(study_data, arm)
    a, b = study.make_batch(first, 0, 5, 3), study.make_batch(second, 0, 5, 3)
    assert all(torch.equal(a[key], b[key]) for key in ('lq', 'gt', 'flow'))
    assert a['lq'].shape == (3, 3, 32, 32) and a['flow'].shape == (3, 4, 32, 32)
    assert not torch.equal(a['lq'], study.make_batch(first, 0, 6, 3)['lq'])
    assert not torch.equal(a['lq'], study.make_batch(first, 1, 5, 3)['lq'])


def test_learning_rate_warms_up_then_falls_to_zero_at_the_horizon(study):
    arm = study.ARMS_BY_NAME['light_s']
    rates = [study.learning_rate(arm, p) for p in (0, study.WARMUP_FRACTION / 2, study.WARMUP_FRACTION, 0.5, 1, 2)]
    assert rates[0] < 1e-9 and rates[1] == pytest.approx(arm.lr / 2, rel=0.01)
    assert rates[2] == pytest.approx(arm.lr, rel=0.01) and rates[3] == pytest.approx(arm.lr / 2, rel=0.03)
    assert rates[4] == pytest.approx(0, abs=1e-12) and rates[5] == pytest.approx(0, abs=1e-12)


def test_smoke_study_halves_resumes_and_reports(study, study_data, small_arms, tmp_path, monkeypatch, capsys):
    work = tmp_path / 'work'
    args = options(study_data, work, '--arm', *SMALL, '--budgets', '0.004', '0.008', '--keep', '0.3', '--always',
                   'nafnet_light', '--horizon', '0.012')
    study.main(args)
    decisions = json.loads((work / 'decisions.json').read_text())
    assert [d['budget_minutes'] for d in decisions] == [0.004, 0.008]
    advanced = decisions[0]['advance']
    best = decisions[0]['ranking'][0][0]
    assert advanced == [best] + (['nafnet_light'] if best != 'nafnet_light' else [])  # the best third + --always
    for name in SMALL:
        evals = read_evals(work, name)
        points = [e['budget_minutes'] for e in evals['evals']]
        assert points == ([0.004, 0.008] if name in advanced else [0.004])
        assert all(e['cpu_minutes'] >= e['budget_minutes'] for e in evals['evals'])
        assert ('offset_error' in evals['evals'][0]) == (name == 'light_s')
    iters = {name: read_evals(work, name)['counters']['iter'] for name in SMALL}

    # the same command again finds everything done
    study.main(args)
    assert {name: read_evals(work, name)['counters']['iter'] for name in SMALL} == iters
    # one arm further, within the schedule's horizon: it continues its own state
    study.main(options(study_data, work, '--arm', SMALL[0], '--minutes', '0.012', '--budgets', '0.004', '0.012'))
    assert read_evals(work, SMALL[0])['counters']['iter'] > iters[SMALL[0]]
    with pytest.raises(SystemExit, match='its schedule ends at 0.012 CPU-minutes'):
        study.main(options(study_data, work, '--arm', SMALL[0], '--minutes', '0.02'))

    monkeypatch.setattr(study, 'FRAME_SIZE', (64, 48))
    monkeypatch.setattr(study, 'DEFAULT_ARM', 'light_s')  # stands for the default preset's arm
    out = tmp_path / 'docs' / 'design_study.md'
    study.main(options(study_data, work, '--arm', *SMALL, '--budgets', '0.004', '0.008', '--report', str(out)))
    text = out.read_text()
    assert '| `light_s` |' in text and '| `nafnet_light` |' in text
    assert '0.004 CPU-min' in text and 'advanced: ' in text and 'not measured yet' in text
    default = text.split('## The default preset')[1].split('##')[0]
    assert 'arm `light_s`' in default and 'against `nafnet_light`' in default and 'last quarter' in default
    assert (tmp_path / 'docs' / 'images' / 'design_study_gain.png').stat().st_size > 1000
    costs = json.loads((work / 'costs.json').read_text())
    assert all(entry['params'] > 0 and entry['gmacs'] > 0 for entry in costs.values())


def test_a_killed_run_continues_where_it_stopped(study, study_data, small_arms, tmp_path, monkeypatch):
    work = tmp_path / 'work'
    real_step, calls = study.ArmRun.step, []

    def step_then_kill(self, batch):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # what ends a session
        return real_step(self, batch)

    monkeypatch.setattr(study.ArmRun, 'step', step_then_kill)
    args = options(study_data, work, '--arm', 'light_s', '--minutes', '0.02', '--budgets', '0.02')
    with pytest.raises(SystemExit, match='state of every arm is saved'):
        study.main(args)
    assert read_evals(work, 'light_s')['counters']['iter'] in (3, 4)  # the signal lands during or after step 4
    assert signal.getsignal(signal.SIGTERM) is not study._stop  # the handler is put back
    monkeypatch.setattr(study.ArmRun, 'step', real_step)
    study.main(args)
    summary = read_evals(work, 'light_s')
    assert summary['counters']['iter'] > 4 and [e['budget_minutes'] for e in summary['evals']] == [0.02]
    assert 'interrupted at' in (work / 'study.log').read_text()
    assert 'from 0.' in (work / 'study.log').read_text().splitlines()[-2]

    # neither does the arm continue with CPU seconds of another meaning, nor a changed arm with another's state
    with pytest.raises(SystemExit, match='was trained with threads 1, not 2; pass --threads 1'):
        study.main(
            options(study_data, work, '--arm', 'light_s', '--minutes', '0.02', '--budgets', '0.02', '--threads', '2'))
    monkeypatch.setitem(study.ARMS_BY_NAME, 'light_s', dataclasses.replace(study.ARMS_BY_NAME['light_s'], lr=1.0))
    with pytest.raises(SystemExit, match="holds another version of arm 'light_s'"):
        study.main(options(study_data, work, '--arm', 'light_s', '--minutes', '0.03', '--budgets', '0.03'))


def test_calibration_records_seconds_per_iteration(study, study_data, small_arms, tmp_path):
    study.main(options(study_data, tmp_path, '--arm', 'light_s', '--calibrate', '--calibrate-steps', '1'))
    calibration = json.loads((tmp_path / 'calibration.json').read_text())
    assert calibration['light_s']['seconds_per_iter'] > 0 and calibration['light_s']['steps'] == 1


def test_bad_input_is_a_clear_error(study, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(['--minutes', '5'])
    assert '--minutes needs --arm' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='no training renders'):
        study.main(
            ['--data',
             str(tmp_path / 'none'), '--work',
             str(tmp_path / 'work'), '--arm', 'light_s', '--minutes', '1'])
    assert not (tmp_path / 'work').exists()


def test_nafnet_baseline_configurations(load_benchmark):
    nafnet = load_benchmark('nafnet_baseline')
    gopro = nafnet.build_nafnet('gopro32')
    assert 16.5e6 < sum(p.numel() for p in gopro.parameters()) < 17.5e6  # the paper's GoPro width-32 model
    net = nafnet.build_nafnet('light').eval()
    x = torch.rand(1, 3, 21, 35)
    with torch.no_grad():
        assert torch.equal(net(x), x)  # starts as the identity, like SDNet
        torch.nn.init.normal_(net.ending.weight, std=0.1)
        assert net(x).shape == x.shape and not torch.equal(net(x), x)
    with pytest.raises(ValueError, match='unknown NAFNet configuration'):
        nafnet.build_nafnet('huge')


def test_light_arms_differ_from_the_nafnet_peer_by_their_svd_modules_only(study, load_benchmark):
    from sdnet_plugin.archs.sdnet_arch import NormGatedBlock

    def block_shapes(net):
        return [[tuple(p.shape) for p in m.parameters()] for m in net.modules() if isinstance(m, NormGatedBlock)]

    peer = load_benchmark('nafnet_baseline').build_nafnet('light')
    light = study.build_network(study.ARMS_BY_NAME['light'], dcn_backend='torch')
    assert sorted(block_shapes(light)) == sorted(block_shapes(peer))
    assert len(block_shapes(peer)) == 1 + 1 + 1 + 28 + 1 + 4
    assert sorted(light.svd) == ['2', '3'] and light.num_levels == 5


def test_warm_flow_guidance_fades_out_early(study, tmp_path):
    arm = study.ARMS_BY_NAME['light_warm']
    assert arm.offset_fade == 0.25 and study.arm_record(arm)['offset_fade'] == 0.25
    assert 'offset_fade' not in study.arm_record(study.ARMS_BY_NAME['light'])  # records of older runs still match


def test_weak_flow_guidance_scales_the_offset_loss(study, tmp_path, monkeypatch):
    arm = study.ARMS_BY_NAME['light_w01']
    assert arm.offset_weight == 0.01 and study.arm_record(arm)['offset_weight'] == 0.01
    assert 'offset_weight' not in study.arm_record(study.ARMS_BY_NAME['light'])  # records of older runs still match
    run = study.ArmRun(arm, argparse.Namespace(work=str(tmp_path), precision='fp32', seed=0), 1)
    # pixel loss 0 and offset loss 1: the step's loss is the offset weight itself
    monkeypatch.setattr(run, 'pixel_loss', lambda pred, target: pred.sum() * 0)
    monkeypatch.setattr(run, 'offset_loss', lambda offsets, flow: offsets[0]['offset'].sum() * 0 + 1)
    run.counters['cpu_seconds'] = 30.0  # half of the one-minute horizon: faded to half
    assert run.step(random_batch()) == pytest.approx(0.005)


@pytest.mark.parametrize('name', ['light', 'nafnet_light'])
def test_frame_time_runs_a_bfloat16_copy(study, name):
    assert study.frame_seconds(study.ARMS_BY_NAME[name], 'bf16', 40, 24, repeats=1) > 0
    assert study.frame_seconds(study.ARMS_BY_NAME[name], 'fp32', 40, 24, repeats=1) > 0
