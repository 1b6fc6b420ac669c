"""SDNetModel: BasicSR's ``SRModel`` with flow-guided offset supervision and the safeguards long deblurring runs need.

Adds to ``SRModel`` (all options are read from the usual option file, see ``docs/training.md``):

* ``train.offset_opt``: a ``FlowGuidedOffsetLoss`` on the SVD modules' offsets, fed by the ``flow`` the dataset
  returns, with a weight schedule (``weight_schedule``: ``constant`` or ``linear`` decay to 0 at ``weight_zero_iter``).
* ``train.grad_clip_norm``: gradient clipping by total norm; the norm is logged as ``grad_norm``.
* ``train.max_nonfinite_steps``: a non-finite loss or gradient skips the step with a warning; that many consecutive
  skips stop the run, with no checkpoint of the diverged weights left as the newest one.
* ``train.amp`` (``auto``, ``bf16``, ``fp16``, ``off``): mixed precision. ``auto`` is bfloat16 on CPUs and GPUs that
  compute it natively, float16 (with a gradient scaler, saved in the training state) on older GPUs, float32
  elsewhere; weights, optimizer state and checkpoints stay float32. ``train.channels_last`` (``auto``, true,
  false): the network's memory layout (``auto``: on for the CPU and for mixed precision on CUDA). Validation uses
  ``val.precision`` (``auto``, ``bf16``, ``fp16``, ``fp32``; ``auto`` follows the training precision).
* Resume keeps the option file's learning rates and learning-rate schedule (periods, milestones), so a run can be
  extended, or continued with a lower learning rate after it diverged.
* Atomic checkpoints (:func:`sdnet_plugin.file_safety.save_torch`: temp file, fsync, ``os.replace``) that also store
  the network options under ``network_g``; a failed save (full disk, read-only folder) warns and keeps the previous
  checkpoints, and no training state is written without the checkpoint of its iteration.
* Training cost: the CPU seconds the run has used (this process and its data-loading children, summed over
  resumes) are logged as ``cpu_h`` (hours) and stored in every training state as ``cpu_seconds``, next to
  ``wall_seconds``, so that progress can be plotted against compute (``scripts/heldout_curve.py``).
* Validation on full images, optionally tiled (``val.tile_size`` / ``val.tile_overlap``, the blending tiler of
  :mod:`sdnet_plugin.inference`) to bound memory, with image names that stay unique across GoPro sequences.
"""
import inspect
import math
import os
import time
from collections import OrderedDict
from copy import deepcopy
from os import path as osp

import psutil
import torch
import torch.distributed as dist
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from sdnet_plugin import compat, inference, precision
from sdnet_plugin.file_safety import save_torch

__all__ = ['DIVERGED_SUFFIX', 'NonFiniteStop', 'OFFSET_WEIGHT_SCHEDULES', 'SDNetModel']

OFFSET_WEIGHT_SCHEDULES = ('constant', 'linear')
# What a resumed scheduler keeps from its training state; everything else comes from the option file.
_SCHEDULER_POSITION_KEYS = ('last_epoch', '_step_count', '_last_lr', 'base_lrs', '_get_lr_called_within_step',
                            '_is_initial', 'verbose')
# Suffix given to the newest checkpoints when a run stops for non-finite steps: BasicSR's resume never picks them up.
DIVERGED_SUFFIX = '.diverged'


def process_cpu_seconds():
    """User + system CPU seconds of this process and its live children (data-loader workers)."""
    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # a worker that just exited
            pass
    return total


class NonFiniteStop(RuntimeError):
    """Too many consecutive non-finite steps: the run stops (``train.py`` reports it on one line)."""


def _plain_options(value):
    """Option dicts as plain ``dict``/``list`` so that checkpoints load with ``torch.load(weights_only=True)``."""
    if isinstance(value, dict):
        return {str(k): _plain_options(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_options(v) for v in value]
    return value


@MODEL_REGISTRY.register()
class SDNetModel(SRModel):
    """Deblurring model: pixel loss + optional flow-guided offset loss, on any BasicSR network.

    Works with any network in ``network_g``; the offset loss needs one whose ``forward`` accepts
    ``return_offsets`` (``SDNet``) and a dataset that returns ``flow`` (``BlurSharpFlowDataset``).

    Args:
        opt (dict): The parsed option file.
    """

    def __init__(self, opt):
        self.cri_offset = None
        self.flow = None
        self.nonfinite_steps = 0
        self.grad_scaler = None
        # BasicSR's device rule (BaseModel sets self.device only inside super().__init__, after networks are built).
        device = torch.device('cuda' if opt.get('num_gpu', 0) != 0 else 'cpu')
        train_opt = opt.get('train') or {}
        self.amp_dtype = precision.resolve(train_opt.get('amp', 'auto'), device) if opt.get('is_train') else None
        val_precision = (opt.get('val') or {}).get('precision', 'auto')
        self.val_dtype = self.amp_dtype if val_precision == 'auto' and opt.get('is_train') else \
            precision.resolve(val_precision, device)
        self.channels_last = precision.use_channels_last(
            train_opt.get('channels_last', 'auto'), device, self.amp_dtype or self.val_dtype)
        self.nonfinite_since = None
        self._cost_base = {'cpu_seconds': 0.0, 'wall_seconds': 0.0}  # spent before this process (from a resume)
        self._cost_start = {'cpu_seconds': process_cpu_seconds(), 'wall_seconds': time.monotonic()}
        self.network_saved = True
        super().__init__(opt)
        if self.amp_dtype == torch.float16:
            self.grad_scaler = torch.amp.GradScaler(self.device.type)
        if opt.get('is_train'):
            get_root_logger().info(f'Mixed precision: {precision.name_of(self.amp_dtype)} on {self.device.type}; '
                                   f'channels-last: {self.channels_last}; validation in '
                                   f'{precision.name_of(self.val_dtype)}.')

    def model_to_device(self, net):
        """BasicSR's ``model_to_device``, in channels-last memory when configured (before any DDP wrapping)."""
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return compat.model_to_device(self, net)  # BasicSR's, with CPU models under torchrun too

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """BasicSR's ``get_optimizer`` for every optimizer in ``torch.optim`` (``Adam``, ``AdamW``, ``SGD``, ...)."""
        return compat.get_optimizer(self, optim_type, params, lr, **kwargs)

    # ------------------------------------------------------------------ training set-up
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.grad_clip_norm = float(train_opt.get('grad_clip_norm', 0) or 0)
        self.max_nonfinite_steps = int(train_opt.get('max_nonfinite_steps', 20))
        if self.grad_clip_norm < 0 or self.max_nonfinite_steps < 1:
            raise ValueError(f'train.grad_clip_norm must be >= 0 and train.max_nonfinite_steps >= 1, got '
                             f'{self.grad_clip_norm} and {self.max_nonfinite_steps}')
        if train_opt.get('offset_opt'):
            self._init_offset_loss(train_opt['offset_opt'])
        super().init_training_settings()

    def _init_offset_loss(self, offset_opt):
        offset_opt = deepcopy(dict(offset_opt))
        self.offset_weight_schedule = offset_opt.pop('weight_schedule', 'constant')
        self.offset_weight_zero_iter = offset_opt.pop('weight_zero_iter', None)
        if self.offset_weight_schedule not in OFFSET_WEIGHT_SCHEDULES:
            raise ValueError(f'train.offset_opt.weight_schedule must be one of {", ".join(OFFSET_WEIGHT_SCHEDULES)}, '
                             f'got {self.offset_weight_schedule!r}')
        if self.offset_weight_schedule == 'linear' and not (self.offset_weight_zero_iter or 0) > 0:
            raise ValueError('train.offset_opt.weight_schedule: linear needs a positive weight_zero_iter (the '
                             'iteration where the offset loss weight reaches 0)')
        train_set_opt = self.opt.get('datasets', {}).get('train', {})
        if train_set_opt.get('use_flow', True) is False:
            raise ValueError('train.offset_opt needs optical flow but datasets.train.use_flow is false; '
                             'set use_flow: true or remove offset_opt')
        forward = self.get_bare_model(self.net_g).forward
        if 'return_offsets' not in inspect.signature(forward).parameters:
            raise ValueError(f'train.offset_opt needs a network that returns its offsets (SDNet), got '
                             f'{self.opt["network_g"]["type"]}; remove offset_opt')
        self.cri_offset = build_loss(offset_opt).to(self.device)

    def offset_weight_factor(self, current_iter):
        """Factor in [0, 1] applied to the offset loss at ``current_iter`` (on top of its ``loss_weight``)."""
        if self.offset_weight_schedule == 'constant':
            return 1.0
        return max(0.0, 1.0 - current_iter / self.offset_weight_zero_iter)

    # ------------------------------------------------------------------ data
    def feed_data(self, data):
        """Take ``lq``, ``gt`` and, when present, ``flow`` ``(B, 4, H, W)`` from a data batch."""
        super().feed_data(data)
        if self.channels_last:
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)
        self.flow = data['flow'].to(self.device) if 'flow' in data else None
        if self.flow is not None and self.flow.shape[-2:] != self.lq.shape[-2:]:
            height, width = self.lq.shape[-2:]
            raise ValueError(f'flow is {self.flow.shape[-2]}x{self.flow.shape[-1]} but the blurry image is '
                             f'{height}x{width} ({data.get("lq_path", ["?"])[0]}): flow and image sizes differ')

    # ------------------------------------------------------------------ optimisation
    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        with precision.autocast(self.device, self.amp_dtype):
            loss_dict, l_total = self._forward_losses(current_iter)
        self._step(current_iter, loss_dict, l_total)

    def _forward_losses(self, current_iter):
        offset_factor = self.offset_weight_factor(current_iter) if self.cri_offset is not None else 0.0
        if offset_factor > 0:
            if self.flow is None:
                raise ValueError('train.offset_opt is set but the training data has no flow (dataset type '
                                 f'{self.opt["datasets"]["train"]["type"]}); use BlurSharpFlowDataset with '
                                 'use_flow: true, or remove offset_opt')
            self.output, offsets = self.net_g(self.lq, return_offsets=True)
        else:
            self.output = self.net_g(self.lq)

        loss_dict = OrderedDict()
        l_total = 0
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
            l_total = l_total + loss_dict['l_pix']
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, term in (('l_percep', l_percep), ('l_style', l_style)):
                if term is not None:
                    loss_dict[name] = term
                    l_total = l_total + term
        if self.cri_offset is not None:
            l_offset = offset_factor * self.cri_offset(offsets, self.flow) if offset_factor > 0 else \
                self.output.new_zeros(())
            loss_dict['l_offset'] = l_offset
            l_total = l_total + l_offset
        loss_dict['l_total'] = l_total
        return loss_dict, l_total

    def _step(self, current_iter, loss_dict, l_total):
        """Backward, gradient clipping and the optimizer step (through the gradient scaler with float16)."""
        if self._any_rank(not torch.isfinite(l_total.detach())):
            self._skip_step(current_iter, 'loss', loss_dict)
            return
        scaler = self.grad_scaler
        (scaler.scale(l_total) if scaler else l_total).backward()
        if scaler:
            scaler.unscale_(self.optimizer_g)
        params = [p for group in self.optimizer_g.param_groups for p in group['params'] if p.grad is not None]
        max_norm = self.grad_clip_norm if self.grad_clip_norm > 0 else float('inf')
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss_dict['grad_norm'] = grad_norm.detach().to(l_total.device)
        if not torch.isfinite(grad_norm):  # DDP has averaged the gradients: every rank sees the same norm
            if scaler:  # float16 overflow: the scaler lowers its scale; the step is skipped like any other
                scaler.update()
            self._skip_step(current_iter, 'gradient', loss_dict)
            return
        if scaler:
            scaler.step(self.optimizer_g)
            scaler.update()
        else:
            self.optimizer_g.step()
        self.nonfinite_steps = 0
        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict['cpu_h'] = self.training_cost()['cpu_seconds'] / 3600
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def training_cost(self):
        """``{'cpu_seconds', 'wall_seconds'}`` of the run so far, resumes included (this process's share)."""
        now = {'cpu_seconds': process_cpu_seconds(), 'wall_seconds': time.monotonic()}
        return {k: self._cost_base[k] + now[k] - self._cost_start[k] for k in now}

    def _any_rank(self, flag):
        """``flag`` OR-ed over all processes, so that every rank takes the same branch (DDP would hang otherwise)."""
        if not self.opt.get('dist', False):
            return bool(flag)
        flag = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _skip_step(self, current_iter, what, loss_dict):
        self.optimizer_g.zero_grad()
        self.nonfinite_steps += 1
        if self.nonfinite_steps == 1:
            self.nonfinite_since = current_iter
        self.log_dict = self.reduce_loss_dict(loss_dict)
        values = ', '.join(f'{k}: {v:.4g}' for k, v in self.log_dict.items())
        get_root_logger().warning(f'Non-finite {what} at iter {current_iter} ({values}): step skipped '
                                  f'({self.nonfinite_steps}/{self.max_nonfinite_steps} in a row).')
        if self.nonfinite_steps >= self.max_nonfinite_steps:
            set_aside = self._set_aside_checkpoints(self.nonfinite_since - 1)
            raise NonFiniteStop(f'{self.nonfinite_steps} consecutive non-finite {what} values up to iter {current_iter}'
                                f'; stopping.{set_aside} Lower the learning rate (train.optim_g.lr) or set '
                                'train.grad_clip_norm, then resume with --auto_resume.')

    def _set_aside_checkpoints(self, current_iter):
        """Rename the checkpoint and training state of ``current_iter`` (they hold the weights whose steps were all
        non-finite) to ``*.diverged``, so that resuming starts from the previous state. Returns a sentence or ''."""
        paths = [
            osp.join(self.opt['path']['training_states'], f'{current_iter}.state'),
            osp.join(self.opt['path']['models'], f'net_g_{current_iter}.pth')
        ]
        moved = [p for p in paths if osp.isfile(p)]
        if self.opt.get('rank', 0) == 0:
            for path in moved:
                os.replace(path, path + DIVERGED_SUFFIX)
        return f' The checkpoints of iter {current_iter} (weights that only gave non-finite steps) were renamed to ' \
               f'*{DIVERGED_SUFFIX}.' if moved else ''

    # ------------------------------------------------------------------ inference and validation
    def test(self):
        """Restore ``self.lq`` into ``self.output`` (float32) with the EMA network when there is one, through
        :class:`sdnet_plugin.inference.SDNetRestorer` (tiled when ``val.tile_size`` is set)."""
        self.flow = None  # not needed for inference; frees memory on large validation images
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        val_opt = self.opt.get('val') or {}
        was_training = net.training
        net.eval()
        restorer = inference.SDNetRestorer(net=net, device=self.device, dtype=self.val_dtype,
                                           tile=int(val_opt.get('tile_size', 0)
                                                    or 0), tile_overlap=int(val_opt.get('tile_overlap', 96)))
        self.output = restorer.forward(self.lq)['image'].to(self.lq.device)
        if was_training:
            net.train()

    def _image_name(self, dataset_opt, lq_path):
        """``SEQ_NNNNNN`` for GoPro-layout paths and LMDB keys, the file stem otherwise (names must not collide)."""
        root = dataset_opt.get('dataroot') or dataset_opt.get('dataroot_lq')
        if osp.isabs(lq_path) and root and osp.abspath(lq_path).startswith(osp.abspath(root) + os.sep):
            lq_path = osp.relpath(lq_path, root)
        elif osp.isabs(lq_path):
            lq_path = osp.basename(lq_path)
        parts = osp.splitext(lq_path)[0].replace('\\', '/').split('/')
        blur_folder = dataset_opt.get('blur_folder', 'blur')
        return '_'.join(p for i, p in enumerate(parts) if not (p == blur_folder and i == len(parts) - 2))

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_opt = dataloader.dataset.opt
        dataset_name = dataset_opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics')
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: 0.0 for metric in metrics_opt}
        pbar = tqdm(total=len(dataloader.dataset), unit='image', desc=f'Validate {dataset_name}') \
            if val_opt.get('pbar', False) else None

        num_images = 0
        for val_data in dataloader:
            self.feed_data(val_data)
            self.test()
            results = self.output.detach().cpu()
            gts = self.gt.detach().cpu() if hasattr(self, 'gt') else None
            for i in range(results.shape[0]):
                img_name = self._image_name(dataset_opt, val_data['lq_path'][i])
                metric_data = {'img': tensor2img(results[i])}
                if gts is not None:
                    metric_data['img2'] = tensor2img(gts[i])
                if save_img:
                    imwrite(metric_data['img'], self._visualization_path(dataset_name, img_name, current_iter))
                if metrics_opt:
                    for name, metric_opt in metrics_opt.items():
                        self.metric_results[name] += calculate_metric(metric_data, metric_opt)
                num_images += 1
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_description(f'Validate {img_name}')
            # free the batch before the next one (large images)
            del self.lq, self.output
            if hasattr(self, 'gt'):
                del self.gt
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if pbar is not None:
            pbar.close()

        if metrics_opt:
            for metric in self.metric_results:
                self.metric_results[metric] /= max(num_images, 1)
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _visualization_path(self, dataset_name, img_name, current_iter):
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch, current_iter):
        """SRModel's save, except while steps are being skipped as non-finite: those weights may have diverged."""
        if self.nonfinite_steps:
            get_root_logger().warning(f'Not saving at iter {current_iter}: the last {self.nonfinite_steps} step(s) '
                                      'were non-finite; the previous checkpoints are kept.')
            return
        self.network_saved = True
        super().save(epoch, current_iter)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's ``save_network``, written atomically and with the network options under ``network_<x>``."""
        nets = net if isinstance(net, list) else [net]
        param_keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(param_keys):
            raise ValueError(f'{len(nets)} networks but {len(param_keys)} param keys')
        save_dict = {}
        for net_, key in zip(nets, param_keys):
            state_dict = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict(
                (k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state_dict.items())
        network_key = net_label[4:] if net_label.startswith('net_') else net_label  # net_g -> g
        if f'network_{network_key}' in self.opt:
            save_dict[f'network_{network_key}'] = _plain_options(self.opt[f'network_{network_key}'])
            bare = self.get_bare_model(nets[0])
            version = getattr(bare, 'preset_version', None)
            if version is not None:  # the preset and version it was built with, so the file always rebuilds it
                save_dict[f'network_{network_key}'].update(preset=bare.preset, preset_version=version)
        iter_name = 'latest' if current_iter == -1 else current_iter
        path = osp.join(self.opt['path']['models'], f'{net_label}_{iter_name}.pth')
        self.network_saved = save_torch(save_dict, path) and self.network_saved

    def resume_training(self, resume_state):
        """BasicSR's resume, except that the learning rates and the schedule's shape come from the option file.

        The state gives the optimizers' moments and the scheduler's position (``last_epoch``); the learning rates
        (``optim_*.lr``), periods, restart weights, milestones and ``eta_min`` are the option file's (changes are
        logged). Unchanged options resume exactly; raising ``train.total_iter`` together with the scheduler's periods
        extends a finished or stopped run, and a lower ``lr`` applies from the first resumed iteration.
        """
        configured = [s.state_dict() for s in self.schedulers]
        configured_lrs = [[group.get('initial_lr', group['lr']) for group in o.param_groups] for o in self.optimizers]
        super().resume_training(resume_state)
        if self.grad_scaler is not None and resume_state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
        self._cost_base = {k: float(resume_state.get(k, 0.0)) for k in self._cost_base}
        self._cost_start = {'cpu_seconds': process_cpu_seconds(), 'wall_seconds': time.monotonic()}
        self._apply_configured_lrs(configured_lrs)
        for scheduler, config in zip(self.schedulers, configured):
            saved = scheduler.state_dict()
            shape = {k: v for k, v in config.items() if k not in _SCHEDULER_POSITION_KEYS}
            if any(saved.get(k) != v for k, v in shape.items()):
                get_root_logger().info(f'Learning-rate schedule from the option file replaces the saved one: '
                                       f'{ {k: saved.get(k) for k in shape} } -> {shape}')
            scheduler.load_state_dict({**saved, **shape})
            scheduler.base_lrs = [group['initial_lr'] for group in scheduler.optimizer.param_groups]
            scheduler._last_lr = [group['lr'] for group in scheduler.optimizer.param_groups]

    def _apply_configured_lrs(self, configured_lrs):
        """Scale the resumed optimizers' learning rates (current and initial) to the option file's ones."""
        for index, (optimizer, lrs) in enumerate(zip(self.optimizers, configured_lrs)):
            for group, new in zip(optimizer.param_groups, lrs):
                old = group.get('initial_lr', group['lr'])
                if math.isclose(old, new, rel_tol=1e-9, abs_tol=0):
                    continue
                get_root_logger().info(f'Learning rate from the option file replaces the saved one (optimizer '
                                       f'{index}): {old:.3e} -> {new:.3e}')
                group['lr'] = group['lr'] * new / old if old > 0 else new
                group['initial_lr'] = new

    @master_only
    def save_training_state(self, epoch, current_iter):
        """BasicSR's ``save_training_state`` (optimizers, schedulers, epoch, iter), written atomically; skipped when
        the checkpoint of the same iteration could not be written (a resume needs both)."""
        if current_iter == -1:
            return
        if not self.network_saved:
            get_root_logger().warning(f'Not saving the training state of iter {current_iter}: its checkpoint could '
                                      'not be written; the previous training states are kept.')
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            **self.training_cost(),
        }
        if self.grad_scaler is not None:
            state['grad_scaler'] = self.grad_scaler.state_dict()
        save_torch(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))
