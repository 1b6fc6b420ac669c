"""End to end through BasicSR's real train/test pipelines (subprocesses), on tiny synthetic GoPro-layout data."""
import copy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / 'sdnet_plugin' / 'train.py'
TEST = REPO / 'sdnet_plugin' / 'test.py'
NETWORK = {'type': 'SDNet', 'preset': 'tiny', 'dcn_backend': 'torch'}


def demo_options(name, train_set, val_set=None, total_iter=4, offset=True):
    """``options/train_sdnet_demo.yml`` scaled down to a tiny network, tiny patches and a few iterations."""
    with open(REPO / 'options' / 'train_sdnet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt.update(name=name, num_gpu=0, network_g=dict(NETWORK))
    opt['datasets']['train'] = dict(train_set, name='tiny-train', type='BlurSharpFlowDataset', gt_size=32,
                                    use_hflip=True, use_vflip=True, use_rot=True, num_worker_per_gpu=0,
                                    batch_size_per_gpu=2, dataset_enlarge_ratio=100)
    if val_set is None:
        del opt['datasets']['val'], opt['val']
    else:
        opt['datasets']['val'] = dict(val_set, name='tiny-val', type='BlurSharpFlowDataset', use_flow=False)
        opt['val'].update(val_freq=2, save_img=True)
    opt['train'].update(total_iter=total_iter, warmup_iter=2)
    opt['train']['scheduler']['periods'] = [total_iter]
    if not offset:
        del opt['train']['offset_opt']
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    return opt


def write_options(opt, folder):
    path = Path(folder) / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run(script, option_file, *args, cwd=None, check=True):
    """Run an entry point from an unrelated working directory, as a user would."""
    result = subprocess.run(
        [sys.executable, str(script), '-opt', str(option_file), *args], cwd=cwd or '/', capture_output=True, text=True,
        timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f'{script.name} failed ({result.returncode}):\n{result.stderr[-3000:]}')
    return result


def lmdb_set(info, use_flow=True):
    paths = info['lmdb']
    opt = {
        'io_backend': {
            'type': 'lmdb'
        },
        'dataroot_lq': paths['blur'],
        'dataroot_gt': paths['sharp'],
        'use_flow': use_flow
    }
    if use_flow:
        opt['dataroot_flow'] = paths['flow']
    return opt


def read_log(exp_dir, prefix='train'):
    logs = sorted(exp_dir.glob(f'{prefix}_*.log'))
    assert logs, f'no {prefix} log in {exp_dir}'
    return '\n'.join(p.read_text() for p in logs)


def test_disk_training_with_offset_loss_then_test(synthetic_gopro, experiment, tmp_path):
    disk = {'io_backend': {'type': 'disk'}, 'dataroot': synthetic_gopro['root']}
    opt = demo_options(experiment, disk, val_set=disk, total_iter=2)
    run(TRAIN, write_options(opt, tmp_path))

    exp = REPO / 'experiments' / experiment
    assert {p.name for p in (exp / 'models').iterdir()} == {'net_g_2.pth', 'net_g_latest.pth'}
    assert {p.name for p in (exp / 'training_states').iterdir()} == {'2.state'}
    log = read_log(exp)
    assert 'iter:       2' in log and 'l_pix:' in log and 'l_offset:' in log and 'grad_norm:' in log
    assert log.count('# psnr:') >= 2 and '# ssim:' in log
    first_seq = synthetic_gopro['keys'][0].replace('/', '_')
    assert (exp / 'visualization' / first_seq / f'{first_seq}_2.png').is_file()
    checkpoint = torch.load(exp / 'models' / 'net_g_2.pth', weights_only=True)
    assert checkpoint['network_g'] == {**NETWORK, 'preset_version': 1} and 'params_ema' in checkpoint

    test_opt = {
        'name': experiment,
        'model_type': 'SDNetModel',
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'test': dict(disk, name='tiny-test', type='BlurSharpFlowDataset', use_flow=False)
        },
        'network_g': dict(NETWORK),
        'path': {
            'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'),
            'param_key_g': 'params_ema'
        },
        'val': {
            'save_img': True,
            'suffix': 'restored',
            'tile_size': 32,
            'tile_overlap': 16,
            'metrics': {
                'psnr': {
                    'type': 'calculate_psnr',
                    'crop_border': 0
                }
            }
        },
    }
    (tmp_path / 'test').mkdir()
    run(TEST, write_options(test_opt, tmp_path / 'test'))
    results = REPO / 'results' / experiment
    assert '# psnr:' in read_log(results, 'test')
    restored = sorted((results / 'visualization' / 'tiny-test').glob('*_restored.png'))
    assert len(restored) == synthetic_gopro['count']


def test_lmdb_training_interrupted_then_auto_resumed(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=1000)
    option_file = write_options(opt, tmp_path)
    states = REPO / 'experiments' / experiment / 'training_states'
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), '-opt', str(option_file)], cwd='/', stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (states / '2.state').exists():
            assert process.poll() is None and time.time() < deadline, 'training stopped before its first checkpoint'
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved = max(int(p.name.split('.')[0]) for p in states.glob('*.state'))
    total = saved + 3

    result = run(TRAIN, option_file, '--auto_resume', '--force_yml', f'train:total_iter={total}')
    log = read_log(REPO / 'experiments' / experiment)
    assert f'Resuming training from epoch: 0, iter: {saved}.' in log
    assert f'iter: {total:7d}' in log and f'iter: {total + 1:7d}' not in log
    assert 'l_offset:' in log
    assert (REPO / 'experiments' / experiment / 'models' / 'net_g_latest.pth').is_file()
    assert result.returncode == 0


def test_stock_basicsr_srmodel_trains_sdnet(synthetic_gopro, experiment, tmp_path):
    sequence = Path(synthetic_gopro['root']) / synthetic_gopro['keys'][0].split('/')[0]
    opt = {
        'name': experiment,
        'model_type': 'SRModel',
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'paired',
                'type': 'PairedImageDataset',
                'dataroot_gt': str(sequence / 'sharp'),
                'dataroot_lq': str(sequence / 'blur'),
                'io_backend': {
                    'type': 'disk'
                },
                'gt_size': 32,
                'use_hflip': True,
                'use_rot': True,
                'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 1,
                'dataset_enlarge_ratio': 10
            }
        },
        'network_g': dict(NETWORK),
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None
        },
        'train': {
            'optim_g': {
                'type': 'Adam',
                'lr': 1e-4
            },
            'scheduler': {
                'type': 'MultiStepLR',
                'milestones': [100],
                'gamma': 0.5
            },
            'total_iter': 3,
            'warmup_iter': -1,
            'pixel_opt': {
                'type': 'L1Loss',
                'loss_weight': 1.0
            }
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': 100,
            'use_tb_logger': False
        },
    }
    run(TRAIN, write_options(opt, tmp_path))
    exp = REPO / 'experiments' / experiment
    assert 'iter:       3' in read_log(exp)
    assert 'params' in torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)


def test_bad_option_is_a_one_line_error(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro))
    opt['network_g']['preset'] = 'huge'
    result = run(TRAIN, write_options(opt, tmp_path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        "error: unknown SDNet preset 'huge'; choose one of tiny, small, base, light_s, light_m, light_l, light"
    assert 'Traceback' not in result.stderr


def test_sdnet_model_trains_on_data_without_flow(synthetic_gopro, tmp_path):
    from basicsr.data import build_dataset
    from basicsr.models import build_model

    import sdnet_plugin  # noqa: F401

    opt = demo_options('unused', lmdb_set(synthetic_gopro, use_flow=False), offset=False)
    dataset_opt = dict(opt['datasets']['train'], phase='train')
    sample = build_dataset(dataset_opt)[0]
    assert 'flow' not in sample
    opt.update(dist=False, is_train=True, rank=0, world_size=1, path={
        'models': str(tmp_path),
        'training_states': str(tmp_path)
    })
    model = build_model(copy.deepcopy(opt))
    model.feed_data({k: v[None] for k, v in sample.items() if torch.is_tensor(v)})
    model.optimize_parameters(1)
    assert 'l_offset' not in model.get_current_log()

    opt['train']['offset_opt'] = {'type': 'FlowGuidedOffsetLoss'}
    with pytest.raises(ValueError, match='use_flow is false'):
        build_model(opt)


def test_torchrun_two_cpu_processes(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=2)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}']
    result = subprocess.run(
        torchrun + [str(TRAIN), '-opt', str(write_options(opt, tmp_path)), '--launcher', 'pytorch'], cwd='/',
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = REPO / 'experiments' / experiment
    log = read_log(exp)
    assert 'World size (gpu number): 2' in log and 'iter:       2' in log and 'l_offset:' in log
    assert (exp / 'models' / 'net_g_latest.pth').is_file()


def test_bfloat16_autocast_training_resumes_and_keeps_float32_checkpoints(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=4)
    opt['network_g']['dcn_backend'] = 'auto'
    opt['train'].update(amp='bf16', channels_last=True)
    option_file = write_options(opt, tmp_path)
    run(TRAIN, option_file, '--force_yml', 'train:total_iter=2')  # stops half-way through the schedule
    exp = REPO / 'experiments' / experiment
    assert 'Mixed precision: bf16 on cpu; channels-last: True' in read_log(exp)
    checkpoint = torch.load(exp / 'models' / 'net_g_2.pth', weights_only=True)
    assert all(v.dtype == torch.float32 for key in ('params', 'params_ema') for v in checkpoint[key].values())
    state = torch.load(exp / 'training_states' / '2.state', weights_only=False)
    assert 'grad_scaler' not in state  # bfloat16 needs no loss scaling
    assert all(v.dtype == torch.float32 for s in state['optimizers'][0]['state'].values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point())

    run(TRAIN, option_file, '--auto_resume')
    log = read_log(exp)
    assert 'Resuming training from epoch: 0, iter: 2.' in log and f'iter: {4:7d}' in log
    resumed = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)
    assert any(not torch.equal(resumed['params'][k], checkpoint['params'][k]) for k in checkpoint['params'])


def test_float16_on_cpu_is_a_one_line_error(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=2)
    opt['train']['amp'] = 'fp16'
    result = run(TRAIN, write_options(opt, tmp_path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == 'error: fp16 is not supported on the CPU; use bf16 (or fp32)'


def test_lower_learning_rate_applies_on_resume(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=4)
    opt['train']['optim_g']['lr'] = 1e-4
    opt['train'].update(scheduler={'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, warmup_iter=-1)
    run(TRAIN, write_options(opt, tmp_path))
    opt['train'].update(total_iter=6)
    opt['train']['optim_g']['lr'] = 1e-6
    run(TRAIN, write_options(opt, tmp_path), '--auto_resume')
    log = read_log(REPO / 'experiments' / experiment)
    assert 'Learning rate from the option file replaces the saved one (optimizer 0): 1.000e-04 -> 1.000e-06' in log
    assert 'iter:       5, lr:(1.000e-06,)' in log and 'iter:       6, lr:(1.000e-06,)' in log, \
        [line for line in log.splitlines() if 'iter:' in line]


def _drop_lmdb_key(info):
    import lmdb
    env = lmdb.open(info['lmdb']['sharp'], map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.delete(info['keys'][0].encode())
    env.close()


def _truncate_first_blurry_image(info):
    seq, name = info['keys'][0].split('/')
    path = Path(info['root']) / seq / 'blur' / f'{name}.png'
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize('case, message', [
    ('dataset type', "unknown dataset type 'BlurSharpFlowDatset' (datasets.<phase>.type); did you mean "
     'BlurSharpFlowDataset?'),
    ('missing data.mdb', '{flow_db} has no data.mdb: not an LMDB database (incomplete copy?)'),
    ('missing key', '{sharp_db}:{key}: key missing'),
    ('truncated image', 'unreadable or truncated image: {root}/{key_path}'),
])
def test_data_errors_are_one_line(make_synthetic_gopro, experiment, tmp_path, case, message):
    info = make_synthetic_gopro(count=2)
    train_set = lmdb_set(info)
    if case == 'dataset type':
        train_set['type'] = 'BlurSharpFlowDatset'
    elif case == 'missing data.mdb':
        (Path(info['lmdb']['flow']) / 'data.mdb').unlink()
    elif case == 'missing key':
        _drop_lmdb_key(info)
    else:
        _truncate_first_blurry_image(info)
        train_set = {'io_backend': {'type': 'disk'}, 'dataroot': info['root']}
    opt = demo_options(experiment, train_set, total_iter=2)
    opt['datasets']['train'].update(type=train_set.get('type', 'BlurSharpFlowDataset'), dataset_enlarge_ratio=1)
    opt['manual_seed'] = 0
    result = run(TRAIN, write_options(opt, tmp_path), check=False)
    seq, name = info['keys'][0].split('/')
    expected = 'error: ' + message.format(key=info['keys'][0], root=info['root'], key_path=f'{seq}/blur/{name}.png',
                                          flow_db=info['lmdb']['flow'], sharp_db=info['lmdb']['sharp'])
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == expected


def test_diverged_run_stops_on_one_line_without_diverged_checkpoints(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=10)
    opt['train'].update(max_nonfinite_steps=2, grad_clip_norm=0, warmup_iter=-1)
    opt['train']['optim_g']['lr'] = 1e30  # the first step throws the weights far out: every later loss is inf/nan
    opt['logger']['save_checkpoint_freq'] = 1
    result = run(TRAIN, write_options(opt, tmp_path), check=False)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        'error: 2 consecutive non-finite loss values up to iter 3; stopping. The checkpoints of iter 1 (weights that '
        'only gave non-finite steps) were renamed to *.diverged. Lower the learning rate (train.optim_g.lr) or set '
        'train.grad_clip_norm, then resume with --auto_resume.')
    exp = REPO / 'experiments' / experiment
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['1.state.diverged']
    assert sorted(p.name for p in (exp / 'models').iterdir()) == ['net_g_1.pth.diverged']
