"""Train with BasicSR's pipeline and the plugin's registries: ``python sdnet_plugin/train.py -opt OPTIONS.yml``.

Accepts BasicSR's arguments (``--auto_resume``, ``--launcher pytorch`` under ``torchrun``, ``--debug``,
``--force_yml``) plus ``--max-minutes N``. Works from any working directory: experiments, logs and relative paths
inside the option file (datasets, weights) are taken from the repository root.

Preemption-safe: SIGTERM or SIGUSR1 (what schedulers such as SLURM send before they stop a job), or the wall-clock
budget of ``--max-minutes`` running out, lets the current training step finish, saves the network checkpoint and the
training state of that iteration, and exits with status 0; ``--auto_resume`` continues from there. Under ``torchrun``
every rank stops after the same iteration.
"""
import importlib
import os
import signal
import sys
import time
from contextlib import contextmanager
from functools import partial
from os import path as osp

ROOT_PATH = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if __name__ == '__main__' and sys.path and osp.abspath(sys.path[0] or '.') == osp.dirname(osp.abspath(__file__)):
    # run as a script: import the package from the repository, not this folder's modules as top-level ones
    sys.path[0] = ROOT_PATH


def prepare_argv(argv):
    """Make the ``-opt`` path absolute, then work from the repository root (BasicSR resolves paths from there)."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '-opt':
            argv[i + 1] = osp.abspath(argv[i + 1])
    os.chdir(ROOT_PATH)
    return argv


def pop_max_minutes(argv):
    """Remove ``--max-minutes N`` (or ``--max-minutes=N``) from ``argv`` (BasicSR's parser does not know it).

    Returns:
        tuple[list[str], float | None]: The remaining arguments and the budget in minutes (None: no budget).
    """
    argv, rest, value = list(argv), [], None
    while argv:
        arg = argv.pop(0)
        if arg == '--max-minutes' or arg.startswith('--max-minutes='):
            text = arg.partition('=')[2] if '=' in arg else (argv.pop(0) if argv else '')
            try:
                value = float(text)
            except ValueError:
                value = float('nan')
            if not value > 0:
                raise ValueError(f'--max-minutes needs a positive number of minutes, got {text!r}')
        else:
            rest.append(arg)
    return rest, value


class TrainingStopped(Exception):
    """Raised after a graceful stop has saved the checkpoint and training state of iteration ``current_iter``."""

    def __init__(self, reason, current_iter):
        super().__init__(f'{reason} at iteration {current_iter}')
        self.reason, self.current_iter = reason, current_iter


class StopRequest:
    """A graceful stop asked for by a signal or due to a wall-clock budget; checked after every training step.

    Args:
        max_minutes (float | None): Budget from ``start``; None for none. Default: None.
        start (float | None): ``time.time()`` the budget counts from. Default: None, now.
    """

    def __init__(self, max_minutes=None, start=None):
        self.signal_name = None
        self.deadline = None if max_minutes is None else (start or time.time()) + 60 * max_minutes

    def on_signal(self, signum, frame):
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def reason(self, opt, device):
        """Why this process stops now (None: go on), the same on every rank of a distributed run."""
        local = self.signal_name or ('time budget' if self.deadline and time.time() >= self.deadline else None)
        if not opt.get('dist', False):
            return local
        import torch
        import torch.distributed as dist
        # 0 go on, 1 budget, 2 signal: every rank takes the strongest reason any rank has
        code = torch.tensor(0.0 if local is None else (1.0 if local == 'time budget' else 2.0), device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return {0: None, 1: 'time budget', 2: local or 'signal on another rank'}[int(code.item())]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _ignore_stop_signals(init_fn, worker_id):
    """Data-loader worker start-up: leave the stop signals to the main process (a worker killed by a signal sent to
    the whole job would make the main process fail in the middle of its step), then run BasicSR's ``init_fn``."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)


@contextmanager
def graceful_stop(max_minutes=None, start=None):
    """Make BasicSR's ``train_pipeline`` stop cleanly on SIGTERM / SIGUSR1 or when ``max_minutes`` have passed.

    The signal handlers only set a flag, so a signal during a checkpoint write does no harm; data-loader workers
    ignore the signals. After each training step the flag is read (all-reduced under ``torchrun``, so every rank
    stops after the same step); when set, the model saves ``net_g_<iter>.pth`` and ``<iter>.state`` as at a regular
    checkpoint and the pipeline ends. Works for any BasicSR model: while the context is active, the pipeline's
    ``build_model`` (to check after each step), ``create_train_val_dataloader`` (to know the epoch),
    ``build_dataloader`` (for the workers) and ``init_tb_loggers`` (to flush the TensorBoard log) are wrapped.

    Args:
        max_minutes (float | None): Wall-clock budget. Default: None.
        start (float | None): When the budget started (``time.time()``). Default: None, now.
    """
    import basicsr.train as pipeline
    stop, run = StopRequest(max_minutes, start), {'epoch': 0, 'tb_logger': None}
    originals = {}

    def build_model(opt):
        model = originals['build_model'](opt)
        step = model.optimize_parameters

        def optimize_parameters(current_iter):
            step(current_iter)
            reason = stop.reason(model.opt, model.device)
            if reason:
                model.save(run['epoch'], current_iter)
                raise TrainingStopped(reason, current_iter)

        model.optimize_parameters = optimize_parameters
        return model

    def create_train_val_dataloader(opt, logger):
        result = originals['create_train_val_dataloader'](opt, logger)
        sampler, set_epoch = result[1], result[1].set_epoch

        def tracked_set_epoch(epoch):
            run['epoch'] = epoch
            set_epoch(epoch)

        sampler.set_epoch = tracked_set_epoch
        return result

    def build_dataloader(*args, **kwargs):
        loader = originals['build_dataloader'](*args, **kwargs)
        loader.worker_init_fn = partial(_ignore_stop_signals, loader.worker_init_fn)
        return loader

    def init_tb_loggers(opt):
        run['tb_logger'] = originals['init_tb_loggers'](opt)
        return run['tb_logger']

    wrappers = {f.__name__: f for f in (build_model, create_train_val_dataloader, build_dataloader, init_tb_loggers)}
    previous = {sig: signal.signal(sig, stop.on_signal) for sig in STOP_SIGNALS}
    for name, wrapper in wrappers.items():
        originals[name] = getattr(pipeline, name)
        setattr(pipeline, name, wrapper)
    try:
        yield stop
    except TrainingStopped as stopped:
        from basicsr.utils import get_root_logger
        if run['tb_logger'] is not None:
            run['tb_logger'].close()
        get_root_logger().info(f'Stopped by {stopped.reason} after iteration {stopped.current_iter}: checkpoint and '
                               'training state saved; continue with --auto_resume.')
    finally:
        for name, original in originals.items():
            setattr(pipeline, name, original)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_pipeline(name):
    """Run BasicSR's ``basicsr.<name>.<name>_pipeline`` (``train`` or ``test``) with the plugin registered.

    Option mistakes end the run with a one-line ``error: ...`` (exit status 1) instead of a traceback. Training
    stops gracefully on SIGTERM / SIGUSR1 and after ``--max-minutes`` (see :func:`graceful_stop`).
    """
    start = time.time()
    try:
        argv, max_minutes = pop_max_minutes(sys.argv) if name == 'train' else (sys.argv, None)
    except ValueError as error:
        sys.exit(f'error: {error}')
    sys.argv = prepare_argv(argv)
    import sdnet_plugin  # noqa: F401  (applies the BasicSR fixes and registers the plugin)
    pipeline = getattr(importlib.import_module(f'basicsr.{name}'), f'{name}_pipeline')
    try:
        if name == 'train':
            with graceful_stop(max_minutes, start):
                pipeline(ROOT_PATH)
        else:
            pipeline(ROOT_PATH)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'error: {error}')


def main():
    run_pipeline('train')


if __name__ == '__main__':
    main()
