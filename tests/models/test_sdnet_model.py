"""SDNetModel in-process: losses and their schedule, safeguards, checkpoints, validation helpers, option errors."""
import math
import os

import pytest
import torch
from basicsr.models import build_model

import sdnet_plugin  # noqa: F401
from sdnet_plugin import file_safety
from sdnet_plugin.archs.sdnet_arch import SDNet
from sdnet_plugin.file_safety import save_torch
from sdnet_plugin.models import sdnet_model

NETWORK = {'type': 'SDNet', 'preset': 'tiny', 'dcn_backend': 'torch'}


def make_opt(tmp_path, offset_opt=None, **train_extra):
    train = {
        'ema_decay': 0.9,
        'optim_g': {
            'type': 'AdamW',
            'lr': 1e-3
        },
        'scheduler': {
            'type': 'CosineAnnealingRestartLR',
            'periods': [10],
            'restart_weights': [1]
        },
        'pixel_opt': {
            'type': 'L1Loss'
        },
    }
    if offset_opt is not None:
        train['offset_opt'] = offset_opt
    train.update(train_extra)
    return {
        'name': 'unit',
        'model_type': 'SDNetModel',
        'num_gpu': 0,
        'dist': False,
        'is_train': True,
        'rank': 0,
        'world_size': 1,
        'network_g': dict(NETWORK),
        'datasets': {
            'train': {
                'type': 'BlurSharpFlowDataset'
            }
        },
        'path': {
            'models': str(tmp_path),
            'training_states': str(tmp_path)
        },
        'train': train,
    }


def batch(height=20, width=24, flow=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = {
        'lq': torch.rand(2, 3, height, width, generator=gen),
        'gt': torch.rand(2, 3, height, width, generator=gen),
        'lq_path': ['a/blur/000000.png', 'a/blur/000001.png']
    }
    if flow:
        data['flow'] = 3 * torch.randn(2, 4, height, width, generator=gen)
    return data


def parameters(model):
    return [p.detach().clone() for p in model.net_g.parameters()]


OFFSET = {'type': 'FlowGuidedOffsetLoss', 'loss_weight': 0.1}


def test_offset_loss_is_added_and_logged_separately(tmp_path):
    model = build_model(make_opt(tmp_path, OFFSET))
    data = batch()
    model.feed_data(data)
    model.optimize_parameters(1)
    log = model.get_current_log()
    assert set(log) == {'l_pix', 'l_offset', 'l_total', 'grad_norm', 'cpu_h'}
    assert log['l_offset'] > 0
    assert log['l_total'] == pytest.approx(log['l_pix'] + log['l_offset'], rel=1e-5)


def test_linear_offset_weight_schedule_reaches_zero(tmp_path):
    opt = make_opt(tmp_path, dict(OFFSET, weight_schedule='linear', weight_zero_iter=4))
    model = build_model(opt)
    assert [model.offset_weight_factor(i) for i in (0, 1, 2, 4, 9)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    model.feed_data(batch())
    model.optimize_parameters(5)
    assert model.get_current_log()['l_offset'] == 0
    constant = build_model(make_opt(tmp_path, OFFSET))
    assert constant.offset_weight_factor(10**6) == 1.0


def test_without_flow_and_without_offset_loss_trains(tmp_path):
    model = build_model(make_opt(tmp_path))
    before = parameters(model)
    model.feed_data(batch(flow=False))
    model.optimize_parameters(1)
    assert 'l_offset' not in model.get_current_log()
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters(model)))


def test_gradient_clipping_bounds_the_update(tmp_path):
    model = build_model(make_opt(tmp_path, grad_clip_norm=1e-3))
    model.feed_data(batch())
    model.optimize_parameters(1)
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.net_g.parameters() if p.grad is not None))
    assert model.get_current_log()['grad_norm'] > 1e-3  # the logged norm is the one before clipping
    assert clipped == pytest.approx(1e-3, rel=1e-3)


def test_non_finite_loss_skips_the_step_then_stops(tmp_path):
    model = build_model(make_opt(tmp_path, max_nonfinite_steps=2))
    before = parameters(model)
    ema_before = [p.detach().clone() for p in model.net_g_ema.parameters()]
    data = batch()
    data['lq'][0, 0, 0, 0] = float('nan')
    model.feed_data(data)
    model.optimize_parameters(1)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(model)))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, model.net_g_ema.parameters()))
    assert model.nonfinite_steps == 1
    model.feed_data(batch())  # a good step resets the count
    model.optimize_parameters(2)
    assert model.nonfinite_steps == 0
    model.feed_data(data)
    model.optimize_parameters(3)
    with pytest.raises(RuntimeError, match='2 consecutive non-finite loss'):
        model.optimize_parameters(4)


def test_checkpoints_hold_network_options_and_are_written_atomically(tmp_path, monkeypatch):
    model = build_model(make_opt(tmp_path))
    model.save(epoch=0, current_iter=3)
    checkpoint = torch.load(tmp_path / 'net_g_3.pth', weights_only=True)
    assert set(checkpoint) == {'params', 'params_ema', 'network_g'}
    assert checkpoint['network_g'] == {**NETWORK, 'preset_version': 1}  # the version it was built with
    net = SDNet(**{k: v for k, v in checkpoint['network_g'].items() if k != 'type'})
    net.load_state_dict(checkpoint['params_ema'])
    state = torch.load(tmp_path / '3.state', weights_only=False)
    assert state['iter'] == 3 and len(state['optimizers']) == len(state['schedulers']) == 1

    # a crash in the middle of writing leaves the previous files intact and no temporary file behind
    good = (tmp_path / '3.state').read_bytes()
    real_save = torch.save

    def crash(obj, f):
        real_save(obj, f)
        f.truncate(10)
        raise OSError('disk full')

    monkeypatch.setattr(sdnet_model.torch, 'save', crash)
    monkeypatch.setattr(file_safety.time, 'sleep', lambda s: None)
    assert not save_torch({'iter': 4}, str(tmp_path / '3.state'))
    assert (tmp_path / '3.state').read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ['3.state', 'net_g_3.pth']


def test_flow_image_size_mismatch_is_a_clear_error(tmp_path):
    model = build_model(make_opt(tmp_path, OFFSET))
    data = batch()
    data['flow'] = data['flow'][..., :-2]
    with pytest.raises(ValueError, match='flow is 20x22 but the blurry image is 20x24'):
        model.feed_data(data)


def test_offset_loss_without_flow_is_a_clear_error(tmp_path):
    model = build_model(make_opt(tmp_path, OFFSET))
    model.feed_data(batch(flow=False))
    with pytest.raises(ValueError, match='training data has no flow'):
        model.optimize_parameters(1)
    opt = make_opt(tmp_path, OFFSET)
    opt['datasets']['train']['use_flow'] = False
    with pytest.raises(ValueError, match='use_flow is false'):
        build_model(opt)


@pytest.mark.parametrize('change, message', [
    ({
        'network_g': {
            'type': 'SDNet',
            'preset': 'huge'
        }
    }, "unknown SDNet preset 'huge'"),
    ({
        'offset_opt': dict(OFFSET, weight_schedule='linear')
    }, 'needs a positive weight_zero_iter'),
    ({
        'offset_opt': dict(OFFSET, weight_schedule='cosine')
    }, 'weight_schedule must be one of'),
    ({
        'grad_clip_norm': -1
    }, 'grad_clip_norm must be >= 0'),
])
def test_bad_options_are_clear_errors(tmp_path, change, message):
    opt = make_opt(tmp_path)
    if 'network_g' in change:
        opt['network_g'] = change['network_g']
    else:
        opt['train'].update(change)
    with pytest.raises(ValueError, match=message):
        build_model(opt)


def test_tiled_validation_matches_the_whole_image(tmp_path):
    opt = make_opt(tmp_path)
    model = build_model(opt)
    model.feed_data(batch(height=70, width=90))
    model.test()
    whole = model.output
    opt['val'] = {'tile_size': 32, 'tile_overlap': 48}
    model.test()
    assert model.output.shape == whole.shape
    assert torch.allclose(model.output, whole, atol=1e-4)


def test_validation_image_names_stay_unique_across_sequences(tmp_path):
    model = build_model(make_opt(tmp_path))
    root = str(tmp_path / 'split')
    disk = {'dataroot': root, 'blur_folder': 'blur'}
    assert model._image_name(disk, os.path.join(root, 'GOPR0372_07_00', 'blur', '000047.png')) == \
        'GOPR0372_07_00_000047'
    assert model._image_name({'dataroot_lq': '/x/val_blur.lmdb'}, 'GOPR0372_07_00/000047') == 'GOPR0372_07_00_000047'
    assert model._image_name({'dataroot_lq': '/elsewhere'}, '/data/lq/0001.png') == '0001'


def learning_rates(model, iters, warmup_iter):
    rates = []
    for current_iter in range(1, iters + 1):
        model.update_learning_rate(current_iter, warmup_iter=warmup_iter)
        rates.append(model.get_current_learning_rate()[0])
    return rates


def test_cosine_schedule_with_linear_warm_up(tmp_path):
    opt = make_opt(tmp_path)
    opt['train']['scheduler'].update(periods=[10], eta_min=1e-5)
    rates = learning_rates(build_model(opt), 10, warmup_iter=4)
    assert rates[:3] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3])  # linear warm-up to lr
    cosine = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (i - 1) / 10)) for i in range(4, 11)]
    assert rates[3:] == pytest.approx(cosine)  # then the cosine curve, counted from iteration 0


def _trained_state(tmp_path, iters=3):
    from sdnet_plugin.compat import load_resume_state
    model = build_model(make_opt(tmp_path))
    for current_iter in range(1, iters + 1):
        model.update_learning_rate(current_iter)
        model.feed_data(batch(seed=current_iter))
        model.optimize_parameters(current_iter)
    model.save(epoch=0, current_iter=iters)
    opt = make_opt(tmp_path)
    opt['auto_resume'] = False
    opt['path']['resume_state'] = str(tmp_path / f'{iters}.state')
    return model, load_resume_state(opt)


def test_resume_restores_optimizer_and_scheduler_on_cpu(tmp_path):
    model, state = _trained_state(tmp_path)
    resumed = build_model(make_opt(tmp_path))
    resumed.resume_training(state)
    assert resumed.schedulers[0].last_epoch == model.schedulers[0].last_epoch == 2
    original, restored = model.optimizer_g.state_dict(), resumed.optimizer_g.state_dict()
    assert restored['state'][0]['step'] == original['state'][0]['step'] == 3
    assert torch.equal(restored['state'][0]['exp_avg'], original['state'][0]['exp_avg'])
    assert restored['state'][0]['exp_avg'].device.type == 'cpu'


def test_training_cost_is_logged_stored_and_summed_over_resumes(tmp_path):
    model, state = _trained_state(tmp_path)
    assert model.log_dict['cpu_h'] > 0
    assert 0 < state['cpu_seconds'] and 0 < state['wall_seconds']
    assert state['cpu_seconds'] <= sdnet_model.process_cpu_seconds()  # never more than the process has used
    state = dict(state, cpu_seconds=7200.0, wall_seconds=9000.0)  # as if two CPU-hours had been spent before
    resumed = build_model(make_opt(tmp_path))
    resumed.resume_training(state)
    resumed.feed_data(batch(seed=9))
    resumed.optimize_parameters(4)
    cost = resumed.training_cost()
    assert 7200 < cost['cpu_seconds'] < 7200 + 60 and 9000 < cost['wall_seconds'] < 9000 + 60
    assert resumed.log_dict['cpu_h'] == pytest.approx(2.0, abs=60 / 3600)


@pytest.mark.parametrize('period', [10, 40])
def test_resume_takes_the_schedule_from_the_option_file(tmp_path, period):
    model, state = _trained_state(tmp_path)
    opt = make_opt(tmp_path)
    opt['train']['scheduler']['periods'] = [period]  # 10: unchanged; 40: the run is extended
    resumed = build_model(opt)
    resumed.resume_training(state)
    resumed.update_learning_rate(4)
    cosine = 0.5 * 1e-3 * (1 + math.cos(math.pi * 3 / period))  # eta_min 0, fourth update is position 3
    assert resumed.get_current_learning_rate()[0] == pytest.approx(cosine)
    if period == 10:  # an unchanged option file resumes exactly where the saved run would have gone
        model.update_learning_rate(4)
        assert resumed.get_current_learning_rate() == pytest.approx(model.get_current_learning_rate())


@pytest.mark.parametrize('amp', ['off', 'bf16'])
def test_mixed_precision_keeps_float32_weights_and_trains(tmp_path, amp):
    model = build_model(make_opt(tmp_path, OFFSET, amp=amp, channels_last='auto'))
    assert model.amp_dtype == (torch.bfloat16 if amp == 'bf16' else None)
    net = model.get_bare_model(model.net_g)
    assert net.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    before = parameters(model)
    model.feed_data(batch())
    assert model.lq.is_contiguous(memory_format=torch.channels_last)
    model.optimize_parameters(1)
    after = parameters(model)
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert math.isfinite(model.log_dict['l_total']) and model.log_dict['l_offset'] > 0
    model.test()
    assert model.output.dtype == torch.float32 and model.output.shape == model.lq.shape


def test_bfloat16_and_float32_training_steps_agree(tmp_path):
    """One step in each precision from the same weights and data: the losses agree to bfloat16's precision."""
    losses = {}
    for amp in ('off', 'bf16'):
        torch.manual_seed(0)
        model = build_model(make_opt(tmp_path, OFFSET, amp=amp))
        model.feed_data(batch())
        model.optimize_parameters(1)
        losses[amp] = model.log_dict['l_pix']
    assert losses['bf16'] == pytest.approx(losses['off'], rel=0.02)


class _Log:

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = info


def test_resume_applies_the_option_files_learning_rate(tmp_path, monkeypatch):
    model, state = _trained_state(tmp_path)
    opt = make_opt(tmp_path)
    opt['train']['optim_g']['lr'] = 1e-5  # the run diverged: resume with a hundred times lower learning rate
    resumed = build_model(opt)
    log = _Log()
    monkeypatch.setattr(sdnet_model, 'get_root_logger', lambda: log)
    resumed.resume_training(state)
    assert any('1.000e-03 -> 1.000e-05' in line for line in log.lines)
    for current_iter in (4, 5):
        model.update_learning_rate(current_iter)
        resumed.update_learning_rate(current_iter)
        assert resumed.get_current_learning_rate()[0] == pytest.approx(model.get_current_learning_rate()[0] / 100)
    assert resumed.optimizer_g.param_groups[0]['initial_lr'] == resumed.schedulers[0].base_lrs[0] == 1e-5


def test_non_finite_stop_leaves_no_diverged_checkpoint_as_newest(tmp_path):
    model = build_model(make_opt(tmp_path, max_nonfinite_steps=2))
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)  # weights after step 1: every following step is non-finite
    data = batch()
    data['lq'][:, 0, 0, 0] = float('inf')
    model.feed_data(data)
    model.optimize_parameters(2)
    model.save(epoch=0, current_iter=2)  # during a run of skipped steps nothing is saved
    assert not (tmp_path / '2.state').exists() and not (tmp_path / 'net_g_2.pth').exists()
    with pytest.raises(sdnet_model.NonFiniteStop, match='iter 1 .* renamed to \\*.diverged. Lower the learning'):
        model.optimize_parameters(3)
    assert sorted(os.listdir(tmp_path)) == ['1.state.diverged', 'net_g_1.pth.diverged']


@pytest.mark.parametrize('failure', ['full disk', 'read-only folder', 'checkpoint only'])
def test_failed_checkpoint_save_warns_and_keeps_the_previous_ones(tmp_path, monkeypatch, failure):
    model = build_model(make_opt(tmp_path))
    model.save(epoch=0, current_iter=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if failure == 'checkpoint only':  # a training state without its checkpoint could not be resumed from
        real_save_torch = sdnet_model.save_torch
        monkeypatch.setattr(sdnet_model, 'save_torch',
                            lambda obj, path: 'net_g' not in os.path.basename(path) and real_save_torch(obj, path))
    elif failure == 'full disk':  # torch.save reports a full disk as a RuntimeError, after writing part of the file
        real_save = torch.save

        def full_disk(obj, f):
            real_save(obj, f)
            raise RuntimeError('[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file')

        monkeypatch.setattr(sdnet_model.torch, 'save', full_disk)
    else:

        def read_only(path, keep_suffix=True):
            raise PermissionError(13, 'Permission denied', str(path))

        monkeypatch.setattr(file_safety, 'temp_path', read_only)
    monkeypatch.setattr(file_safety.time, 'sleep', lambda s: None)
    model.save(epoch=0, current_iter=1)  # warns, does not raise
    model.save(epoch=0, current_iter=2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_training_states_load_without_running_code(tmp_path):
    from sdnet_plugin.compat import load_resume_state
    marker = tmp_path / 'code_ran'

    class Payload:

        def __reduce__(self):
            return os.mkdir, (str(marker), )

    torch.save({'iter': 3, 'epoch': 0, 'optimizers': [Payload()], 'schedulers': []}, tmp_path / '3.state')
    opt = make_opt(tmp_path)
    opt.update(auto_resume=False)
    opt['path']['resume_state'] = str(tmp_path / '3.state')
    with pytest.raises(ValueError, match='cannot resume from .*3.state: .*refused'):
        load_resume_state(opt)
    assert not marker.exists()


def test_training_state_loader_reasons(tmp_path):
    from collections import Counter

    from sdnet_plugin.compat import load_training_state
    good = tmp_path / 'good.state'
    torch.save({'iter': 1, 'schedulers': [{'milestones': Counter([5, 10])}], 'w': torch.ones(3)}, good)
    assert load_training_state(good)['schedulers'][0]['milestones'] == Counter([5, 10])
    cases = {
        'truncated': (good.read_bytes()[:300], 'unreadable: PytorchStreamReader failed reading zip archive'),
        'empty': (b'', 'unreadable: empty, cut short or not a torch file'),
        'not a torch file': (b'\x80\x02zzzz', 'unreadable: empty, cut short or not a torch file'),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f'^{reason}'):
            load_training_state(tmp_path / name)


@pytest.mark.parametrize('damage', ['state cut short', 'checkpoint cut short', 'checkpoint missing'])
def test_truncated_newest_state_falls_back_to_the_previous_one(tmp_path, monkeypatch, capsys, damage):
    from sdnet_plugin.compat import load_resume_state
    opt = make_opt(tmp_path)
    exp = tmp_path / 'experiments' / 'unit'
    opt['path'].update(training_states=str(exp / 'training_states'), models=str(exp / 'models'))
    model = build_model(opt)
    for current_iter in (2, 10):
        model.save(epoch=0, current_iter=current_iter)
    damaged = exp / ('training_states/10.state' if damage == 'state cut short' else 'models/net_g_10.pth')
    if damage == 'checkpoint missing':
        damaged.unlink()
    else:
        damaged.write_bytes(damaged.read_bytes()[:1000])  # a copy cut short
    monkeypatch.chdir(tmp_path)
    opt = make_opt(tmp_path)
    opt.update(auto_resume=True)
    opt['path'].update(resume_state=None, models=str(exp / 'models'))
    assert load_resume_state(opt)['iter'] == 2
    assert opt['path']['resume_state'].endswith('2.state') and opt['path']['pretrain_network_g'].endswith('_2.pth')
    reason = 'unreadable: PytorchStreamReader' if damage == 'state cut short' else \
        f'its checkpoint {damaged} is missing or cut short'
    assert f'warning: cannot resume from experiments/unit/training_states/10.state ({reason}' in \
        capsys.readouterr().err


@pytest.mark.parametrize('section, key, value, message', [
    ('network_g', 'type', 'SDNett', "unknown arch type 'SDNett' \\(network_g.type\\); did you mean SDNet"),
    (None, 'model_type', 'SDNetModle', "unknown model type 'SDNetModle' \\(model_type\\); did you mean SDNetModel"),
    ('optim_g', 'type', 'AdamX', "unknown optimizer type 'AdamX' .*did you mean Adam"),
])
def test_misspelt_types_are_option_errors(tmp_path, section, key, value, message):
    opt = make_opt(tmp_path)
    target = {None: opt, 'network_g': opt['network_g'], 'optim_g': opt['train']['optim_g']}[section]
    target[key] = value
    with pytest.raises(ValueError, match=message):
        build_model(opt)
