"""Every compatibility fix the plugin needs for pip ``basicsr==1.4.2``, in one place.

:func:`apply` runs once when ``sdnet_plugin`` is imported; :func:`prepare` holds the part that must run before
``basicsr`` itself is imported (the import hook ``sdnet_plugin_hook`` calls it first, then imports the plugin).
Each fix is idempotent, touches only BasicSR, and can be removed once a BasicSR release includes the equivalent
change (its master branch already fixes the first one). Fixes 4 and 5 concern a model's own methods, so they are not
applied to BasicSR at all: :class:`~sdnet_plugin.models.SDNetModel` overrides the two methods with
:func:`get_optimizer` and :func:`model_to_device`, and BasicSR's own models keep theirs.

1. ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17, but
   ``basicsr/data/degradations.py`` imports ``rgb_to_grayscale`` from it, so ``import basicsr`` fails. We register an
   alias module pointing at ``torchvision.transforms.functional`` before BasicSR is imported.
   Remove when: a basicsr release no longer imports ``functional_tensor``.
2. ``basicsr.train.load_resume_state`` maps resume states to ``torch.cuda.current_device()``, so resuming fails on
   a CPU-only machine. We load onto the CPU (optimizers move their state to the parameters' device when loading)
   with ``weights_only=True``: a training state made elsewhere can hold only tensors, numbers, strings, lists,
   dicts and the types in :data:`TRAINING_STATE_TYPES`, never code. With ``--auto_resume`` an unreadable newest
   state (truncated copy, full disk), or one whose checkpoint is missing or cut short, is skipped with a warning for
   the previous one, and the states are looked for under ``opt['root_path']``, the root the pipeline was given (the
   working directory when unset). Remove when: basicsr maps resume states to the model's device and loads them
   safely.
3. ``basicsr.utils.dist_util._init_dist_pytorch`` always calls ``torch.cuda.set_device`` and uses NCCL, so
   ``torchrun ... --launcher pytorch`` cannot run without GPUs. Without CUDA we initialise a ``gloo`` group.
   Remove when: basicsr chooses the backend from the available devices.
4. ``BaseModel.get_optimizer`` accepts only ``Adam``. ``SDNetModel`` accepts every optimizer in ``torch.optim``
   (``AdamW``, ``SGD``, ...), keeping the same ``optim_g: {type: ..., lr: ..., ...}`` option format.
   Remove when: basicsr's ``get_optimizer`` covers AdamW (its master branch does).
5. ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to
   ``DistributedDataParallel`` even for a CPU model, so distributed training without GPUs (fix 3) fails.
   ``SDNetModel`` passes ``device_ids=None`` for CPU models. Remove when: basicsr wraps CPU models without CUDA
   calls.
6. ``Registry.get`` raises a ``KeyError`` whose text is quoted, which the entry points cannot tell from a bug. A
   misspelt ``type:`` raises :class:`UnknownTypeError` (a ``ValueError``), naming the closest registered names.
   Remove when: basicsr reports unknown types as option errors.
7. BasicSR's own entry points (``python -m basicsr.train``, ``python basicsr/train.py``) run ``train.py`` as
   ``__main__``, a second copy of the module whose ``load_resume_state`` fix 2 does not reach; and an installed
   basicsr takes its root folder from its own location, so experiments and results would go inside
   ``site-packages`` (and ``--auto_resume``, which looks under the working directory, would never find them).
   ``parse_options``, which every pipeline calls first, gives the calling train script fix 2 and, for an installed
   basicsr, uses the working directory as the root (as a BasicSR checkout does when run from its root).
   Remove when: fix 2 is gone and basicsr's pip entry points write to the working directory.
"""
import collections
import difflib
import importlib
import os
import pickle
import sys
import types
import zipfile

__all__ = [
    'TRAINING_STATE_TYPES', 'UnknownTypeError', 'apply', 'prepare', 'load_resume_state', 'load_training_state',
    'get_optimizer', 'model_to_device', 'registry_get', 'unknown_type_message'
]

_applied = False
# What BasicSR's training states hold besides tensors and builtins (found by saving the states of every scheduler
# BasicSR builds with Adam, AdamW, SGD, RMSprop, Adamax and Adagrad): MultiStepLR's milestones are a Counter.
TRAINING_STATE_TYPES = (collections.Counter, collections.OrderedDict)
REGISTRY_OPTIONS = {
    'arch': 'network_g.type',
    'model': 'model_type',
    'dataset': 'datasets.<phase>.type',
    'loss': 'train.<loss>_opt.type',
    'metric': 'val.metrics.<name>.type'
}


class UnknownTypeError(KeyError, ValueError):
    """A ``type:`` in the option file that no registry holds (a ``ValueError``, so entry points print one line)."""

    def __str__(self):
        return str(self.args[0])


def unknown_type_message(kind, name, known, option):
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f'did you mean {", ".join(close)}?' if close else f'choose one of {", ".join(sorted(known))}'
    return f'unknown {kind} type {name!r} ({option}); {hint}'


def _alias_functional_tensor():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    import torchvision.transforms.functional as functional
    alias = types.ModuleType(name)
    alias.__dict__.update({k: v for k, v in vars(functional).items() if not k.startswith('__')})
    sys.modules[name] = alias


def _installed_root(root_path):
    """Whether ``root_path`` (BasicSR's root folder) is the ``site-packages`` folder of an installed basicsr."""
    return os.path.basename(os.path.normpath(root_path)) in ('site-packages', 'dist-packages')


class _Options(dict):
    """Options whose ``root_path`` stays the working directory (``train_pipeline`` sets it to its own root)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, os.getcwd() if key == 'root_path' and _installed_root(value) else value)


def _wrap_parse_options(parse_options):
    """``basicsr.utils.options.parse_options`` with fix 7."""
    if getattr(parse_options, '_sdnet_fixed', False):
        return parse_options

    def wrapper(root_path, is_train=True):
        caller = sys._getframe(1).f_globals
        resume = caller.get('load_resume_state')
        code = getattr(resume, '__code__', None)
        if code is not None and code.co_filename.endswith(os.path.join('basicsr', 'train.py')):
            caller['load_resume_state'] = load_resume_state
        if not _installed_root(root_path):
            return parse_options(root_path, is_train)
        opt, args = parse_options(os.getcwd(), is_train)
        return _Options(opt), args

    wrapper._sdnet_fixed = True
    wrapper.__doc__ = parse_options.__doc__
    return wrapper


def load_training_state(path):
    """Load a training state (BasicSR's ``<iter>.state``, or a packed one) onto the CPU without running code.

    Every training state is read here, with ``torch.load(weights_only=True)``: besides tensors, numbers, strings,
    lists, tuples and dicts only the types in :data:`TRAINING_STATE_TYPES` are allowed, so a state made by someone
    else cannot run theirs.

    Args:
        path (str): The file.

    Returns:
        object: What the file holds.

    Raises:
        ValueError: The file holds other objects (refused), or cannot be read (truncated, not a torch file).
        OSError: The file cannot be opened.
    """
    import torch

    from sdnet_plugin.utils import error_line
    try:
        with torch.serialization.safe_globals(list(TRAINING_STATE_TYPES)):
            return torch.load(path, map_location='cpu', weights_only=True)
    except OSError:
        raise
    except Exception as error:  # truncated (RuntimeError), empty (EOFError), not a torch file (KeyError, ...)
        if isinstance(error, pickle.UnpicklingError) and 'global' in str(error).lower():  # a refused type
            raise ValueError('it holds objects other than tensors and plain values (refused: loading would run '
                             'code)') from None
        reason = error_line(error).split('. ')[0] if isinstance(error, RuntimeError) else 'empty, cut short or not a ' \
            'torch file'  # torch's first sentence, or what the unpickler's KeyError / EOFError mean
        raise ValueError(f'unreadable: {reason}') from None


def _broken_checkpoint(opt, current_iter):
    """The first checkpoint that resuming from ``current_iter`` loads (``models/net_<x>_<iter>.pth``, as BasicSR's
    ``check_resume`` names them) that is missing or cut short (not a complete zip archive, which is what
    ``torch.save`` writes), or None."""
    models, ignored = opt['path'].get('models'), opt['path'].get('ignore_resume_networks') or ()
    for network in (key for key in opt if key.startswith('network_') and key not in ignored and models):
        path = os.path.join(models, f'net_{network[len("network_"):]}_{current_iter}.pth')
        if not zipfile.is_zipfile(path):
            return path
    return None


def load_resume_state(opt):
    """BasicSR's ``load_resume_state`` that also works on CPU (fix 2)."""
    from os import path as osp

    from basicsr.utils import check_resume, scandir

    from sdnet_plugin.utils import error_line
    candidates = []
    if opt['auto_resume']:
        # under the root the pipeline gives BasicSR (BasicSR's own function looks under the working directory)
        state_path = osp.join(opt.get('root_path', ''), 'experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            states = sorted(
                (int(v.split('.state')[0])
                 for v in scandir(state_path, suffix='state', recursive=False) if v.split('.state')[0].isdigit()),
                reverse=True)
            candidates = [osp.join(state_path, f'{state}.state') for state in states]
    elif opt['path'].get('resume_state'):
        candidates = [opt['path']['resume_state']]
    for index, resume_state_path in enumerate(candidates):
        try:
            resume_state = load_training_state(resume_state_path)
            if not (isinstance(resume_state, dict) and isinstance(resume_state.get('iter'), int)):
                raise ValueError('not a BasicSR training state')
            broken = _broken_checkpoint(opt, resume_state['iter'])
            if broken:
                raise ValueError(f'its checkpoint {broken} is missing or cut short')
        except Exception as error:
            reason = error_line(error)
            if index + 1 == len(candidates):
                raise ValueError(f'cannot resume from {resume_state_path}: {reason}') from None
            print(f'warning: cannot resume from {resume_state_path} ({reason}); trying {candidates[index + 1]}',
                  file=sys.stderr)
            continue
        opt['path']['resume_state'] = resume_state_path
        check_resume(opt, resume_state['iter'])
        return resume_state
    return None


def _init_dist_pytorch(backend, **kwargs):
    """BasicSR's torchrun initialisation, with a gloo fallback when there is no GPU (fix 3)."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])) % torch.cuda.device_count())
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def get_optimizer(self, optim_type, params, lr, **kwargs):
    """``BaseModel.get_optimizer`` for any ``torch.optim`` optimizer (fix 4; ``SDNetModel.get_optimizer``).

    Args:
        self (BaseModel | None): The model (unused; the signature is BasicSR's method's).
        optim_type (str): Class name in ``torch.optim``.
        params (list): Parameters or parameter groups.
        lr (float): Learning rate.
    """
    import torch
    optimizer_cls = getattr(torch.optim, optim_type, None)
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        known = [
            k for k, v in vars(torch.optim).items()
            if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer
        ]
        raise ValueError(unknown_type_message('optimizer', optim_type, known, 'train.optim_g.type, from torch.optim'))
    return optimizer_cls(params, lr, **kwargs)


def model_to_device(self, net):
    """``BaseModel.model_to_device`` that also wraps CPU models for distributed training (fix 5;
    ``SDNetModel.model_to_device``).

    Args:
        self (BaseModel): The model: its ``device`` and ``opt`` (``dist``, ``num_gpu``, ``find_unused_parameters``).
        net (nn.Module): The network.
    """
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids,
                                      find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def registry_get(self, name, suffix='basicsr'):
    """``Registry.get`` that reports a misspelt type as an option error (fix 6)."""
    found = self._obj_map.get(name)
    if found is None:
        found = self._obj_map.get(f'{name}_{suffix}')
    if found is None:
        raise UnknownTypeError(
            unknown_type_message(self._name, name, self._obj_map.keys(), REGISTRY_OPTIONS.get(self._name, 'type')))
    return found


def prepare():
    """The fixes ``import basicsr`` itself needs (fix 1); cheap and idempotent."""
    _alias_functional_tensor()


def apply():
    """Apply all fixes (idempotent)."""
    global _applied
    if _applied:
        return
    prepare()
    import basicsr.test
    import basicsr.train
    import basicsr.utils.dist_util
    import basicsr.utils.options
    from basicsr.utils.registry import Registry
    basicsr.train.load_resume_state = load_resume_state
    Registry.get = registry_get
    parse_options = _wrap_parse_options(basicsr.utils.options.parse_options)
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = parse_options
    basicsr.utils.dist_util._init_dist_pytorch = _init_dist_pytorch
    _applied = True
