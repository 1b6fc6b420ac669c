"""Train with BasicSR's pipeline and the plugin's registries: ``python sdnet_plugin/train.py -opt OPTIONS.yml``.

Accepts BasicSR's arguments (``--auto_resume``, ``--launcher pytorch`` under ``torchrun``, ``--debug``,
``--force_yml``) plus ``--max-minutes N``; ``python -m sdnet_plugin.train`` is the same. Works from any working
directory: experiments, logs and relative paths inside the option file (datasets, weights) are taken from the
repository root (:func:`root_path`; the working directory for an installed package), which is given to BasicSR as
its root and joined to the relative paths explicitly (:func:`resolve_option_paths`); the working directory itself
is never changed.

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

__all__ = [
    'StopRequest', 'TrainingStopped', 'carry_over_training_state', 'end_process_group', 'graceful_stop', 'main',
    'pack_training_state', 'pop_max_minutes', 'prepare_argv', 'run_pipeline', 'unpack_training_state'
]
ROOT_PATH = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))


def root_path():
    """The folder experiments, results and relative option paths are taken from: the repository root when the
    package runs from a checkout, else (an installed package, whose parent folder is ``site-packages``) the working
    directory."""
    return ROOT_PATH if osp.isfile(osp.join(ROOT_PATH, 'setup.py')) else os.getcwd()


def prepare_argv(argv):
    """Make the ``-opt`` path absolute (taken from the working directory, as given on the command line)."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '-opt':
            argv[i + 1] = osp.abspath(argv[i + 1])
    return argv


def _is_path_option(section, key):
    if section == 'path':
        return key.startswith('pretrain_network') or key == 'resume_state'
    return key.startswith('dataroot') or key == 'meta_info_file'


def resolve_option_paths(opt, root):
    """Join the relative file paths of parsed options to ``root``, in place: the datasets' ``dataroot_*`` and
    ``meta_info_file``, and ``path.pretrain_network_*`` and ``path.resume_state``. (The folders BasicSR derives,
    ``experiments/<name>``, ``results/<name>`` and ``tb_logger/<name>``, already start at its root.)

    Returns:
        dict: ``opt``.
    """
    sections = [('path', opt.get('path') or {})]
    sections += [('datasets', dataset) for dataset in (opt.get('datasets') or {}).values() if isinstance(dataset, dict)]
    for section, values in sections:
        for key, value in values.items():
            if _is_path_option(section, key) and isinstance(value, str) and value and not osp.isabs(value):
                values[key] = osp.join(root, value)
    return opt


@contextmanager
def options_from_root(pipeline_module, root):
    """While active, the options ``pipeline_module`` parses have their relative paths joined to ``root``."""
    parse_options = pipeline_module.parse_options

    def parse_from_root(root_path, is_train=True):
        opt, args = parse_options(root_path, is_train)
        return resolve_option_paths(opt, root), args

    pipeline_module.parse_options = parse_from_root
    try:
        yield
    finally:
        pipeline_module.parse_options = parse_options


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

    Option mistakes, bad data (unreadable files, missing keys) and a run stopped by non-finite steps end with a
    one-line ``error: ...`` (exit status 1) instead of a traceback. Training stops gracefully on SIGTERM / SIGUSR1
    and after ``--max-minutes`` (see :func:`graceful_stop`).
    """
    start = time.time()
    try:
        argv, max_minutes = pop_max_minutes(sys.argv) if name == 'train' else (sys.argv, None)
    except ValueError as error:
        sys.exit(f'error: {error}')
    sys.argv = prepare_argv(argv)
    import sdnet_plugin  # noqa: F401  (applies the BasicSR fixes and registers the plugin)
    from sdnet_plugin.models.sdnet_model import NonFiniteStop
    from sdnet_plugin.utils import error_line
    module = importlib.import_module(f'basicsr.{name}')
    pipeline, root = getattr(module, f'{name}_pipeline'), root_path()
    try:
        with options_from_root(module, root):
            if name == 'train':
                with graceful_stop(max_minutes, start):
                    pipeline(root)
            else:
                pipeline(root)
    except (ValueError, OSError, NonFiniteStop) as error:
        sys.exit(f'error: {error_line(error)}')
    end_process_group()


def end_process_group():
    """Under ``torchrun``: wait for every rank, then tear the process group down.

    BasicSR's pipelines leave the group to the interpreter's exit, where a rank that finishes first can destroy its
    gloo connections while a peer still uses them; that rank then dies with ``terminate called without an active
    exception`` (SIGABRT) and the launcher reports the run as failed although it ended.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main():
    run_pipeline('train')


if __name__ == '__main__':
    main()

# ----------------------------------------------------------------------------------------------------------------
# Compact training states: one file with everything ``--auto_resume`` needs, small enough to keep in a repository
PACK_PRECISIONS = (  # tried in this order until the file fits
    ('exact', None, None),  # everything float32
    ('ema16', 'float16', None),  # the EMA copy in float16
    ('ema16+moments_bf16', 'float16', 'bfloat16'),  # and the optimizer moments in bfloat16
)


def _cast_tensors(value, dtype):
    """``value`` (nested dicts/lists) with every floating-point tensor of more than one element cast to ``dtype``."""
    import torch
    if isinstance(value, dict):
        return {k: _cast_tensors(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_tensors(v, dtype) for v in value)
    if torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
        return value.to(getattr(torch, dtype))
    return value


def _read_training_state(path):
    """:func:`sdnet_plugin.compat.load_training_state` (no code runs), its errors naming ``path``."""
    from sdnet_plugin.compat import load_training_state
    try:
        return load_training_state(path)
    except ValueError as error:
        raise ValueError(f'cannot read {path}: {error}') from None


def _write_training_state(obj, path):
    """:func:`sdnet_plugin.file_safety.save_torch`, raising ``OSError`` when the file could not be written."""
    from sdnet_plugin.file_safety import save_torch
    if not save_torch(obj, path):
        raise OSError(f'could not write {path} (see the warnings above); nothing was replaced')


def _newest_training_state(experiment_dir):
    """``(state, checkpoint)`` of the newest ``training_states/<iter>.state`` of an experiment and the
    ``models/net_g_<iter>.pth`` of the same iteration (``FileNotFoundError`` when either is missing)."""
    states = [int(name[:-len('.state')]) for name in os.listdir(osp.join(experiment_dir, 'training_states'))
              if name.endswith('.state') and name[:-len('.state')].isdigit()] \
        if osp.isdir(osp.join(experiment_dir, 'training_states')) else []
    if not states:
        raise FileNotFoundError(f'no training state (<iter>.state) in {experiment_dir}/training_states')
    current_iter = max(states)
    net_path = osp.join(experiment_dir, 'models', f'net_g_{current_iter}.pth')
    if not osp.isfile(net_path):
        raise FileNotFoundError(f'{net_path} is missing: a training state needs the checkpoint of its iteration')
    return _read_training_state(osp.join(experiment_dir, 'training_states', f'{current_iter}.state')), \
        _read_training_state(net_path)


def _write_resume_files(state, network, experiment_dir):
    """``training_states/<iter>.state`` and ``models/net_g_<iter>.pth`` under ``experiment_dir``."""
    for folder in ('training_states', 'models'):
        os.makedirs(osp.join(experiment_dir, folder), exist_ok=True)
    _write_training_state(network, osp.join(experiment_dir, 'models', f'net_g_{state["iter"]}.pth'))
    _write_training_state(state, osp.join(experiment_dir, 'training_states', f'{state["iter"]}.state'))


def pack_training_state(experiment_dir, out_path, max_mb=25.0):
    """Pack the newest training state of an experiment and its checkpoint into one file of at most ``max_mb``.

    A BasicSR resume needs ``training_states/<iter>.state`` (iteration, epoch, optimizer and scheduler states) and
    ``models/net_g_<iter>.pth`` (network and EMA weights). Everything is kept in float32 when it fits; otherwise the
    EMA copy is stored in float16 (it never feeds back into training, so the run itself still resumes exactly), and
    if that is not enough the Adam moments too, in bfloat16 (0.4 % relative rounding of each moment).

    Args:
        experiment_dir (str): ``experiments/<name>``.
        out_path (str): The packed file (written atomically).
        max_mb (float): Size limit in MB (10^6 bytes). Default: 25.

    Returns:
        dict: ``iter``, ``precision`` (the first of ``exact``, ``ema16``, ``ema16+moments_bf16`` that fits) and
        ``bytes``.
    """
    import io

    import torch

    state, network = _newest_training_state(experiment_dir)
    for precision, ema_dtype, moment_dtype in PACK_PRECISIONS:
        packed = {
            'format': 'sdnet-training-state',
            'precision': precision,
            'state': {
                k: (_cast_tensors(v, moment_dtype) if k == 'optimizers' and moment_dtype else v)
                for k, v in state.items()
            },  # every key, e.g. a gradient scaler's state too
            'network': {
                k: (_cast_tensors(v, ema_dtype) if k == 'params_ema' and ema_dtype else v) for k, v in network.items()
            },
        }
        buffer = io.BytesIO()
        torch.save(packed, buffer)
        if buffer.tell() <= max_mb * 1e6:
            break
    else:
        raise ValueError(f'the training state of {experiment_dir} needs {buffer.tell() / 1e6:.1f} MB even in '
                         f'{precision}; raise the limit (max_mb)')
    _write_training_state(packed, out_path)
    return {'iter': state['iter'], 'precision': precision, 'bytes': osp.getsize(out_path)}


def unpack_training_state(packed_path, experiment_dir):
    """Write a packed state back as ``training_states/<iter>.state`` + ``models/net_g_<iter>.pth`` (float32) under
    ``experiment_dir``, so that ``--auto_resume`` continues from it.

    Returns:
        int: The iteration.
    """
    packed = _read_training_state(packed_path)
    if not isinstance(packed, dict) or packed.get('format') != 'sdnet-training-state':
        raise ValueError(f'{packed_path} is not a packed training state')
    state = dict(packed['state'], optimizers=_cast_tensors(packed['state']['optimizers'], 'float32'))
    _write_resume_files(state, _cast_tensors(packed['network'], 'float32'), experiment_dir)
    return state['iter']


def carry_over_training_state(experiment_dir, out_dir, network_opt):
    """Continue a run with a changed network: the newest training state of ``experiment_dir`` rewritten under
    ``out_dir`` for the network ``network_opt`` builds, so that ``--auto_resume`` there goes on from the same
    iteration, learning-rate schedule, optimizer moments and compute counters.

    Parameters are matched by name. A parameter of the same name and shape keeps its weights, EMA weights and Adam
    moments; one the new network lacks is dropped (e.g. blocks taken out); one only the new network has starts from
    its initialisation (seeded) with fresh moments. The new network's options replace the checkpoint's
    ``network_g``, so exported weights rebuild it.

    Args:
        experiment_dir (str): ``experiments/<name>`` of the run so far; its checkpoint must store ``network_g``.
        out_dir (str): ``experiments/<new name>`` (must hold no training state yet).
        network_opt (dict): ``network_g`` options of the new network (``type`` and its arguments).

    Returns:
        dict: ``iter`` and the parameter names ``kept``, ``dropped`` and ``new``.

    Raises:
        FileNotFoundError: No training state in ``experiment_dir``.
        ValueError: The checkpoint stores no network options, the optimizer state does not match the old network,
            a parameter changed shape, or ``out_dir`` already holds a training state.
    """
    import copy

    import torch
    from basicsr.archs import build_network

    import sdnet_plugin  # noqa: F401 (registers the architectures)
    from sdnet_plugin.archs.sdnet_arch import pin_preset_version

    if osp.isdir(osp.join(out_dir, 'training_states')) and os.listdir(osp.join(out_dir, 'training_states')):
        raise ValueError(f'{out_dir} already holds a training state; carry over into a new experiment folder')
    state, checkpoint = _newest_training_state(experiment_dir)
    if not isinstance(checkpoint.get('network_g'), dict):
        raise ValueError(f'the checkpoint of {experiment_dir} stores no network options (network_g)')

    def parameter_names(opt):
        torch.manual_seed(0)
        net = build_network(copy.deepcopy(opt))
        return [name for name, p in net.named_parameters() if p.requires_grad], net

    old_names, _ = parameter_names(pin_preset_version(checkpoint['network_g']))
    new_opt = dict(network_opt)
    new_names, new_net = parameter_names(new_opt)
    fresh = new_net.state_dict()
    if getattr(new_net, 'preset_version', None) is not None:  # options without a version mean the current one
        new_opt['preset_version'] = new_net.preset_version
    optimizers = copy.deepcopy(state['optimizers'])
    for optimizer in optimizers:
        if len(optimizer['param_groups']) != 1 or len(optimizer['param_groups'][0]['params']) != len(old_names):
            raise ValueError(f'the optimizer state of {experiment_dir} does not match its network (one parameter '
                             f'group of {len(old_names)} parameters expected)')
    weights = checkpoint['params']
    changed = [n for n in new_names if n in weights and weights[n].shape != fresh[n].shape]
    if changed:
        raise ValueError(f'parameters changed shape, cannot carry them over: {", ".join(changed[:5])}')
    old_index = {name: i for i, name in enumerate(old_names)}
    for optimizer in optimizers:
        old_states, group = optimizer['state'], optimizer['param_groups'][0]
        optimizer['state'] = {
            j: old_states[group['params'][old_index[n]]] for j, n in enumerate(new_names)
            if n in old_index and group['params'][old_index[n]] in old_states
        }
        group['params'] = list(range(len(new_names)))
    network = {'network_g': new_opt}
    for key in ('params', 'params_ema'):
        if key in checkpoint:
            network[key] = {k: checkpoint[key][k] if k in checkpoint[key] else v for k, v in fresh.items()}
    _write_resume_files(dict(state, optimizers=optimizers), network, out_dir)
    return {
        'iter': state['iter'],
        'kept': [n for n in fresh if n in weights],
        'dropped': [n for n in weights if n not in fresh],
        'new': [n for n in fresh if n not in weights]
    }
