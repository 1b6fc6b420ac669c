"""Every compatibility fix the plugin needs for pip ``basicsr==1.4.2``, in one place.

:func:`apply` runs once when ``sdnet_plugin`` is imported. Each fix is idempotent, touches only BasicSR, and can be
removed once a BasicSR release includes the equivalent change (its master branch already fixes the first one).

1. ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17, but
   ``basicsr/data/degradations.py`` imports ``rgb_to_grayscale`` from it, so ``import basicsr`` fails. We register an
   alias module pointing at ``torchvision.transforms.functional`` before BasicSR is imported.
   Remove when: a basicsr release no longer imports ``functional_tensor``.
2. ``basicsr.train.load_resume_state`` maps resume states to ``torch.cuda.current_device()``, so resuming fails on
   a CPU-only machine, and torch >= 2.6 loads with ``weights_only=True``, which rejects the scheduler states. We
   load onto the CPU (optimizers move their state to the parameters' device when loading) and trust the local
   training-state file. Remove when: basicsr maps resume states to the model's device.
3. ``basicsr.utils.dist_util._init_dist_pytorch`` always calls ``torch.cuda.set_device`` and uses NCCL, so
   ``torchrun ... --launcher pytorch`` cannot run without GPUs. Without CUDA we initialise a ``gloo`` group.
   Remove when: basicsr chooses the backend from the available devices.
4. ``BaseModel.get_optimizer`` accepts only ``Adam``. We accept every optimizer in ``torch.optim`` (``AdamW``,
   ``SGD``, ...), keeping the same ``optim_g: {type: ..., lr: ..., ...}`` option format.
   Remove when: basicsr's ``get_optimizer`` covers AdamW (its master branch does).
5. ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to
   ``DistributedDataParallel`` even for a CPU model, so distributed training without GPUs (fix 3) fails. We pass
   ``device_ids=None`` for CPU models. Remove when: basicsr wraps CPU models without CUDA calls.
"""
import importlib
import os
import sys
import types

_applied = False


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


def load_resume_state(opt):
    """BasicSR's ``load_resume_state`` that also works on CPU (fix 2)."""
    import torch
    from os import path as osp

    from basicsr.utils import check_resume, scandir
    resume_state_path = None
    if opt['auto_resume']:
        state_path = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            states = [float(v.split('.state')[0]) for v in scandir(state_path, suffix='state', recursive=False)]
            if states:
                resume_state_path = osp.join(state_path, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    resume_state = torch.load(resume_state_path, map_location='cpu', weights_only=False)
    check_resume(opt, resume_state['iter'])
    return resume_state


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
    """``BaseModel.get_optimizer`` for any ``torch.optim`` optimizer (fix 4)."""
    import torch
    optimizer_cls = getattr(torch.optim, optim_type, None)
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise NotImplementedError(f'optimizer {optim_type} is not in torch.optim')
    return optimizer_cls(params, lr, **kwargs)


def model_to_device(self, net):
    """``BaseModel.model_to_device`` that also wraps CPU models for distributed training (fix 5)."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def apply():
    """Apply all fixes (idempotent)."""
    global _applied
    if _applied:
        return
    _alias_functional_tensor()
    import basicsr.train
    import basicsr.utils.dist_util
    from basicsr.models.base_model import BaseModel
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.dist_util._init_dist_pytorch = _init_dist_pytorch
    BaseModel.get_optimizer = get_optimizer
    BaseModel.model_to_device = model_to_device
    _applied = True
