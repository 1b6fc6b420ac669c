"""Graceful stops of ``sdnet_plugin/train.py``: SIGTERM / SIGUSR1 and ``--max-minutes`` (real subprocesses)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_pipeline import REPO, TRAIN, demo_options, lmdb_set, read_log, run, write_options

from sdnet_plugin.train import StopRequest, pop_max_minutes


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob('*') if p.is_file())


def _logged_iters(log):
    return [int(m) for m in re.findall(r'iter:\s*(\d+), lr:', log)]


def _logged_lr(log, current_iter):
    return float(re.search(rf'iter:\s*{current_iter}, lr:\(([0-9.e+-]+),\)', log).group(1))


def _expected_lr(opt, current_iter):
    """The learning rate of an uninterrupted run at ``current_iter`` (BasicSR's warm-up + cosine schedule)."""
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR
    train = opt['train']
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train['optim_g']['lr'])
    sched = {k: v for k, v in train['scheduler'].items() if k != 'type'}
    scheduler = CosineAnnealingRestartLR(optimizer, **sched)
    optimizer.step()  # no gradients: changes nothing, keeps the scheduler from warning
    for _ in range(current_iter - 1):
        scheduler.step()
    assert current_iter >= train['warmup_iter']
    return optimizer.param_groups[0]['lr']


def _wait_for_iter(exp, process, target, timeout=120):
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None and time.time() < deadline, 'training ended before it was signalled'
        logs = list(exp.glob('train_*.log'))
        if logs and any(i >= target for i in _logged_iters(logs[0].read_text())):
            return
        time.sleep(0.1)


def _check_stopped(exp, reason):
    """One checkpoint + training state of the stop iteration, nothing temporary; returns that iteration."""
    log = read_log(exp)
    stopped = int(re.search(rf'Stopped by {reason} after iteration (\d+)', log).group(1))
    assert max(_logged_iters(log), default=0) == stopped - 1  # the stopping step ends before the pipeline logs it
    files = [f for f in _files(exp) if not f.startswith(('train_', 'tb_logger'))]
    assert [f for f in files if f.startswith(('models/', 'training_states/'))] == \
        [f'models/net_g_{stopped}.pth', f'training_states/{stopped}.state']
    assert not [f for f in _files(exp) if f.endswith('.partial') or '/.' in f], _files(exp)
    state = torch.load(exp / 'training_states' / f'{stopped}.state', map_location='cpu', weights_only=False)
    assert state['iter'] == stopped and state['schedulers'][0]['last_epoch'] == stopped - 1
    return stopped


def test_sigterm_to_the_whole_job_saves_and_resume_continues_exactly(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=1000)
    opt['datasets']['train']['num_worker_per_gpu'] = 1  # a data-loader worker gets the signal too
    opt['logger']['save_checkpoint_freq'] = 1000
    option_file = write_options(opt, tmp_path)
    exp = REPO / 'experiments' / experiment
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), '-opt', str(option_file)], cwd='/', stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_iter(exp, process, 2)
        os.killpg(process.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:].decode()
    stopped = _check_stopped(exp, 'SIGTERM')

    run(TRAIN, option_file, '--auto_resume', '--force_yml', f'train:total_iter={stopped + 2}')
    log = read_log(exp)
    assert f'Resuming training from epoch: 0, iter: {stopped}.' in log
    resumed = _logged_iters(log.split('Resuming training')[1])
    assert resumed == [stopped + 1, stopped + 2]
    assert _logged_lr(log, stopped + 1) == pytest.approx(_expected_lr(opt, stopped + 1), rel=1e-3)
    assert (exp / 'models' / 'net_g_latest.pth').is_file()


def test_max_minutes_budget_stops_after_a_step(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=1000)
    opt['logger']['save_checkpoint_freq'] = 1000
    option_file = write_options(opt, tmp_path)
    result = run(TRAIN, option_file, '--max-minutes', '0.0001')  # spent before the first step
    assert result.returncode == 0
    exp = REPO / 'experiments' / experiment
    assert _check_stopped(exp, 'time budget') == 1

    run(TRAIN, option_file, '--auto_resume', '--max-minutes=0.0001')
    log = read_log(exp)
    assert 'Resuming training from epoch: 0, iter: 1.' in log and not _logged_iters(log)
    assert 'Stopped by time budget after iteration 2' in log
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['1.state', '2.state']

    for bad in ('0', '-3', 'soon'):
        result = run(TRAIN, option_file, '--max-minutes', bad, check=False)
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith('error: --max-minutes')


def test_torchrun_ranks_stop_at_the_same_iteration(synthetic_gopro, experiment, tmp_path):
    opt = demo_options(experiment, lmdb_set(synthetic_gopro), total_iter=1000)
    opt['logger']['save_checkpoint_freq'] = 1000
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
        str(TRAIN), '-opt',
        str(write_options(opt, tmp_path)), '--launcher', 'pytorch'
    ]
    process = subprocess.Popen(command, cwd='/', stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    exp = REPO / 'experiments' / experiment
    try:
        _wait_for_iter(exp, process, 2)
        ranks = sorted(int(p) for p in Path(f'/proc/{process.pid}/task/{process.pid}/children').read_text().split())
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGUSR1)  # one rank only: the other must stop after the same iteration
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:].decode()
    _check_stopped(exp, '(?:SIGUSR1|signal on another rank)')


def test_stop_request_parsing_and_budget():
    assert pop_max_minutes(['-opt', 'a.yml', '--max-minutes', '1.5', '--auto_resume']) == \
        (['-opt', 'a.yml', '--auto_resume'], 1.5)
    assert pop_max_minutes(['--max-minutes=2']) == ([], 2.0)
    assert pop_max_minutes(['-opt', 'a.yml']) == (['-opt', 'a.yml'], None)
    with pytest.raises(ValueError):
        pop_max_minutes(['--max-minutes'])
    assert StopRequest(1.0).reason({}, 'cpu') is None
    assert StopRequest(1.0, start=time.time() - 61).reason({}, 'cpu') == 'time budget'
    request = StopRequest()
    request.on_signal(signal.SIGUSR1, None)
    request.on_signal(signal.SIGTERM, None)
    assert request.reason({}, 'cpu') == 'SIGUSR1'
