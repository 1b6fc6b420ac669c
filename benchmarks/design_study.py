"""Equal-budget design study: which deblurring design turns a CPU-hour into the most held-out gain.

Every arm trains from scratch on the same synthetic renders (same seed, same crops and flips at every iteration
for arms with the same patch and batch size), with AdamW and a learning rate that warms up and then follows a
cosine to zero at the schedule's horizon, measured in process CPU seconds (``time.process_time()``, all threads;
a shared machine slows an arm down in wall time but barely changes its CPU time). Only the training steps are
charged to the budget; loading batches and the held-out evaluations are not (their wall time is reported).
Held-out scores come at fixed points of the budget (every ``--eval-every`` CPU-minutes and at every budget): PSNR /
SSIM gain over the blurry input on renders of photographs never used for training, and for arms with SVD modules
the order-invariant offset error of their sampling points against the exact flows (``scripts/eval_heldout.py``).

Successive halving spends the CPU where it tells most: every arm trains to the first budget, the better half (by
held-out PSNR gain there; ``--always`` arms stay in) continues to the second, and so on. The learning-rate horizon
is the last budget for every arm (``--horizon`` sets it longer), so a continued arm is the same run as a longer
one, and all arms are compared at the same point of the same schedule; an arm's horizon is fixed when it starts.
State is saved atomically per arm (``--work``) every ``--save-every`` CPU-minutes, at every score, on Ctrl-C and on
SIGTERM, so a killed run continues where it stopped when started again with the same command.

Threads: one per process by default. On the shared 2-core machine (load 4-5) a training step with 2 threads cost
more CPU time and more wall time than with one, and unequally so: ``light_m`` 0.84 -> 2.80 CPU-s (wall 1.2 -> 3.1 s),
``nafnet_light`` 0.47 -> 1.97 CPU-s (wall 0.5 -> 4.0 s), so CPU-time budgets at 2 threads would charge designs
of many small operations for waiting. ``--threads 2`` suits an idle machine.

Example::

    python benchmarks/design_study.py --prepare                     # data under datasets/study (once)
    python benchmarks/design_study.py --calibrate                   # CPU seconds per iteration of every arm
    python benchmarks/design_study.py                               # the study: all arms, halving over --budgets
    python benchmarks/design_study.py --arm light_m --minutes 40    # one arm to 40 CPU-minutes
    python benchmarks/design_study.py --report                      # docs/design_study.md and its plot
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import os.path as osp
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

# Idle OpenMP threads sleep instead of spinning: spinning counts as process CPU time (it made a 2-thread training step
# of light_m cost 4.7 CPU-seconds instead of 1.2 here) and takes cores from other processes on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))

from basicsr.losses.basic_loss import CharbonnierLoss, L1Loss  # noqa: E402
from nafnet_baseline import build_nafnet  # noqa: E402
from speed import count_macs, count_parameters  # noqa: E402

import sdnet_plugin  # noqa: E402,F401  (BasicSR fixes and registries)
from sdnet_plugin.archs.sdnet_arch import SDNet  # noqa: E402
from sdnet_plugin.data.blur_sharp_flow_dataset import BlurSharpFlowDataset  # noqa: E402
from sdnet_plugin.evaluation import evaluate, find_pairs  # noqa: E402
from sdnet_plugin.file_safety import atomic_path, save_torch, write_bytes  # noqa: E402
from sdnet_plugin.inference import inference_copy  # noqa: E402
from sdnet_plugin.losses.flow_offset_loss import FlowGuidedOffsetLoss  # noqa: E402
from sdnet_plugin.losses.psnr_loss import PSNRLoss  # noqa: E402
from sdnet_plugin.ops import select_backend  # noqa: E402

DEFAULT_DATA = osp.join('datasets', 'study')
DEFAULT_WORK = osp.join('experiments', 'design_study')
DEFAULT_BUDGETS = (10, 20, 40)
STATE_FORMAT = 1
FRAME_SIZE = (1280, 720)  # width, height of the frame whose cost the report gives
WARMUP_FRACTION = 0.02  # of the horizon: linear learning-rate warm-up
FFT_WEIGHT = 0.1  # MIMO-UNet's weight of the frequency term
OFFSET_WEIGHT = 0.1  # flow-guided offset loss, as in the shipped recipe (fading to 0 at the horizon)
# The data the study trains and scores on, rendered by the project's own tools from the collector's photographs
# (whole photographs apart: training packages for train/, the held-out wallpaper packages for eval/).
PREPARE_STEPS = (
    ('photos', ['datasets_prep/collect_photos.py', '--out', '{data}/photos', '--cache', '{data}/.photo_packages']),
    ('eval', [
        'datasets_prep/synthesize_gopro.py', '--out', '{data}/eval', '--count', '44', '--photos', '{data}/photos/eval',
        '--size', '384x256', '--seed', '2', '--workers', '1', '--split', 'all'
    ]),
    ('train', [
        'datasets_prep/synthesize_gopro.py', '--out', '{data}/train', '--count', '800', '--photos',
        '{data}/photos/train', '--size', '256x256', '--seed', '0', '--workers', '1', '--split', 'all'
    ]),
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One design under study.

    Args:
        name (str): Arm name (folder name in the work folder).
        what (str): One-line description for the report.
        network (tuple): ``('SDNet', {kwargs})`` or ``('NAFNet', config name)``.
        lr (float): Peak learning rate. Default: 1e-3.
        pixel_loss (str): ``'l1'``, ``'psnr'``, ``'charbonnier'`` or ``'l1_fft'`` (L1 plus MIMO-UNet's L1 on the
            2-D Fourier transform, weight 0.1). Default: ``'l1'``.
        offset_loss (str): ``'none'``, ``'ordered'`` or ``'order_invariant'`` flow-guided offset loss (weight 0.1,
            fading linearly to 0 at the horizon). Default: ``'none'``.
        patch (int): Training crop side. Default: 128.
        batch (int): Crops per step. Default: 8.
        offset_fade (float): Share of the horizon over which the offset loss fades to 0 (1: the whole run; 0.25:
            flow guidance for the first quarter only, then the sampling points are free). Default: 1.0.
        offset_weight (float): Starting weight of the offset loss (the pixel L1 of a blurry start is about 0.05,
            an offset error of one feature pixel costs 1 before weighting). Default: 0.1.
    """
    name: str
    what: str
    network: tuple
    lr: float = 1e-3
    pixel_loss: str = 'l1'
    offset_loss: str = 'none'
    patch: int = 128
    batch: int = 8
    offset_fade: float = 1.0
    offset_weight: float = OFFSET_WEIGHT

    @property
    def has_svd(self):
        options = dict(self.network[1]) if self.network[0] == 'SDNet' else {}
        return self.network[0] == 'SDNet' and not options.get('plain_svd') and options.get('svd_levels') != ()


def _sdnet(preset, **kwargs):
    # Version 1 of every preset: the arms were defined (and run) with it; later versions come from the study.
    return ('SDNet', tuple(sorted(dict(preset=preset, preset_version=1, **kwargs).items())))


ARMS = [
    Arm('base', 'SDNet base as shipped: L1 + order-invariant offset loss, lr 4e-4', _sdnet('base'), lr=4e-4,
        offset_loss='order_invariant'),
    Arm('base_plain', 'base with every SVD module a plain 3x3 conv (backbone alone)',
        _sdnet('base', plain_svd=True), lr=4e-4),
    Arm('base_noflow', 'base, SVD modules without flow guidance', _sdnet('base'), lr=4e-4),
    Arm('base_ordered', 'base, flow guidance with ordered targets', _sdnet('base'), lr=4e-4, offset_loss='ordered'),
    Arm('light_s', 'light SDNet, small (4 levels, gated blocks, SVD at 1/4, 1/8), flow-guided',
        _sdnet('light_s'), offset_loss='order_invariant'),
    Arm('light_m', 'light SDNet, medium, flow-guided', _sdnet('light_m'), offset_loss='order_invariant'),
    Arm('light_l', 'light SDNet, large, flow-guided', _sdnet('light_l'), offset_loss='order_invariant'),
    Arm('light_m_noflow', 'light_m, SVD modules without flow guidance', _sdnet('light_m')),
    Arm('light_m_plain', 'light_m with plain 3x3 convs in place of the SVD modules',
        _sdnet('light_m', plain_svd=True)),
    Arm('light_m_psnr', 'light_m, PSNR loss in place of L1', _sdnet('light_m'), pixel_loss='psnr',
        offset_loss='order_invariant'),
    Arm('light_m_charb', 'light_m, Charbonnier loss in place of L1', _sdnet('light_m'), pixel_loss='charbonnier',
        offset_loss='order_invariant'),
    Arm('light_m_fft', 'light_m, L1 + frequency-domain L1 (MIMO-UNet)', _sdnet('light_m'), pixel_loss='l1_fft',
        offset_loss='order_invariant'),
    Arm('light_m_p64b32', 'light_m, 32 crops of 64x64 (same pixels per step)', _sdnet('light_m'),
        offset_loss='order_invariant', patch=64, batch=32),
    Arm('light_m_p256b2', 'light_m, 2 crops of 256x256 (same pixels per step)', _sdnet('light_m'),
        offset_loss='order_invariant', patch=256, batch=2),
    Arm('light', 'light SDNet: the NAFNet-style peer\'s backbone with SVD modules at 1/4, 1/8, flow-guided',
        _sdnet('light'), offset_loss='order_invariant'),
    Arm('light_noflow', 'light, SVD modules without flow guidance', _sdnet('light')),
    Arm('light_warm', 'light, flow guidance for the first quarter of the schedule only', _sdnet('light'),
        offset_loss='order_invariant', offset_fade=0.25),
    Arm('light_fine', 'light with its SVD modules at 1/2 and 1/4 (blur spans a few feature pixels), early guidance',
        _sdnet('light', svd_levels=(1, 2)), offset_loss='order_invariant', offset_fade=0.25),
    Arm('light_fine_noflow', 'light_fine without flow guidance', _sdnet('light', svd_levels=(1, 2))),
    Arm('light_w01', 'light, weak flow guidance (offset weight 0.01) over the whole schedule', _sdnet('light'),
        offset_loss='order_invariant', offset_weight=0.01),
    Arm('light_fine_w01', 'light_fine, weak flow guidance (offset weight 0.01) over the whole schedule',
        _sdnet('light', svd_levels=(1, 2)), offset_loss='order_invariant', offset_weight=0.01),
    Arm('light_lean_w01', 'light_fine_w01 without blocks at full resolution (the 8-channel level only converts)',
        _sdnet('light', svd_levels=(1, 2), num_block=(0, 1, 1, 28, 1), num_dec_block=(0, 1, 1, 1)),
        offset_loss='order_invariant', offset_weight=0.01),
    Arm('light_lean_noflow', 'light_lean_w01 without flow guidance',
        _sdnet('light', svd_levels=(1, 2), num_block=(0, 1, 1, 28, 1), num_dec_block=(0, 1, 1, 1))),
    Arm('light_lean_warm', 'light without blocks at full resolution, flow guidance for the first quarter (light_warm)',
        _sdnet('light', num_block=(0, 1, 1, 28, 1), num_dec_block=(0, 1, 1, 1)), offset_loss='order_invariant',
        offset_fade=0.25),
    Arm('nafnet_light', 'NAFNet-style peer at the 720p cost of light_m (width 8)', ('NAFNet', 'light')),
    Arm('nafnet_lean', 'NAFNet-style peer without blocks at full resolution: light_lean_warm\'s backbone alone '
        '(its 720p cost without the SVD modules)', ('NAFNet', 'lean')),
    Arm('nafnet32', 'NAFNet-style GoPro configuration (width 32)', ('NAFNet', 'gopro32')),
]  # yapf: disable
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}
DEFAULT_ALWAYS = ('nafnet_light', )  # the peer the new default must beat at the largest budget
# The arm whose network is the current version of SDNet's default preset (light version 2) and whose recipe (flow
# guidance fading out over the first quarter) the default weights use.
DEFAULT_ARM = 'light_lean_warm'
DEFAULT_PEERS = ('nafnet_lean', 'nafnet_light')  # its backbone alone (less at 720p), and with full-resolution blocks


def build_network(arm, dcn_backend='auto'):
    """The arm's untrained network (seeded by the caller)."""
    kind, options = arm.network
    if kind == 'NAFNet':
        return build_nafnet(options)
    return SDNet(**dict(options), dcn_backend=dcn_backend)


def arm_record(arm):
    """The arm's settings as plain data (stored with its state; a changed arm refuses to resume)."""
    record = dataclasses.asdict(arm)
    for key, default in (('offset_fade', 1.0), ('offset_weight', OFFSET_WEIGHT)):
        if record[key] == default:  # arms recorded before the setting existed
            del record[key]
    network = dict(arm.network[1]) if arm.network[0] == 'SDNet' else arm.network[1]
    if arm.network[0] == 'SDNet' and network.get('preset_version') == 1:  # arms recorded before presets had versions
        del network['preset_version']
    record['network'] = [arm.network[0], network]
    return record


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------
def native_bf16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(name):
    if name == 'auto':
        return 'bf16' if native_bf16() else 'fp32'
    return name


def learning_rate(arm, progress):
    """Peak ``arm.lr`` after a linear warm-up, cosine to 0 at ``progress`` (spent / horizon CPU seconds) = 1."""
    progress = min(max(progress, 0.0), 1.0)
    warmup = min(1.0, (progress + 1e-9) / WARMUP_FRACTION)
    return arm.lr * warmup * 0.5 * (1 + math.cos(math.pi * progress))


class PixelLoss(torch.nn.Module):
    """The arm's pixel loss on float32 images in [0, 1]."""

    def __init__(self, kind):
        super().__init__()
        if kind not in ('l1', 'psnr', 'charbonnier', 'l1_fft'):
            raise ValueError(f'unknown pixel loss {kind!r}')
        self.kind = kind
        self.loss = {'psnr': PSNRLoss(), 'charbonnier': CharbonnierLoss(eps=1e-3)}.get(kind, L1Loss())

    def forward(self, pred, target):
        loss = self.loss(pred, target)
        if self.kind == 'l1_fft':
            diff = torch.view_as_real(torch.fft.rfft2(pred) - torch.fft.rfft2(target))
            loss = loss + FFT_WEIGHT * diff.abs().mean()
        return loss


def training_set(data, arm):
    return BlurSharpFlowDataset({
        'io_backend': {
            'type': 'disk'
        },
        'dataroot': osp.join(data, 'train'),
        'use_flow': True,
        'phase': 'train',
        'gt_size': arm.patch,
        'use_hflip': True,
        'use_vflip': True,
        'use_rot': True
    })


def make_batch(dataset, seed, iteration, batch_size):
    """Batch ``iteration`` of the study: the same samples, crops and flips for every arm with this batch size."""
    rng = np.random.default_rng([seed, iteration])
    indices = rng.choice(len(dataset), size=batch_size, replace=len(dataset) < batch_size)
    state = random.getstate()
    random.seed(int(rng.integers(1 << 62)))  # the dataset crops and flips with Python's random
    try:
        items = [dataset[int(i)] for i in indices]
    finally:
        random.setstate(state)
    return {key: torch.stack([item[key] for item in items]) for key in ('lq', 'gt', 'flow')}


class ArmRun:
    """Training state of one arm in ``<work>/<arm>/``: ``state.pth`` (network, optimizer, counters) and
    ``evals.json`` (the held-out scores so far), both written atomically."""

    def __init__(self, arm, args, horizon_minutes):
        self.arm, self.args = arm, args
        self.folder = osp.join(args.work, arm.name)
        self.state_path = osp.join(self.folder, 'state.pth')
        self.evals_path = osp.join(self.folder, 'evals.json')
        self.precision = resolve_precision(args.precision)
        torch.manual_seed(args.seed)
        self.net = build_network(arm)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=arm.lr, betas=(0.9, 0.99), weight_decay=1e-4)
        self.pixel_loss = PixelLoss(arm.pixel_loss)
        self.offset_loss = None if arm.offset_loss == 'none' else FlowGuidedOffsetLoss(
            criterion='l1', motion_threshold=0.5, order_invariant=arm.offset_loss == 'order_invariant')
        self.counters = {
            'iter': 0,
            'cpu_seconds': 0.0,
            'wall_seconds': 0.0,
            'data_seconds': 0.0,
            'eval_seconds': 0.0,
            'skipped_steps': 0
        }
        self.evals, self.losses = [], []
        self.horizon_minutes = horizon_minutes
        if osp.isfile(self.state_path):
            self._load()
        if self.precision == 'bf16':
            self.net = self.net.to(memory_format=torch.channels_last)
        if arm.has_svd:  # 'auto' times the DCN backends once per process: not on the budget's clock
            select_backend('cpu', torch.bfloat16 if self.precision == 'bf16' else torch.float32, backward=True)

    def _load(self):
        state = torch.load(self.state_path, map_location='cpu', weights_only=True)
        if state.get('format') != STATE_FORMAT or state['arm'] != arm_record(self.arm):
            raise ValueError(f'{self.state_path} holds another version of arm {self.arm.name!r}; move it away or '
                             'use another --work folder')
        for key, now in (('precision', self.precision), ('threads', torch.get_num_threads())):
            if state[key] != now:  # CPU seconds would change their meaning within the arm
                raise ValueError(f'{self.state_path} was trained with {key} {state[key]}, not {now}; pass '
                                 f'--{key} {state[key]}')
        self.net.load_state_dict(state['network'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.counters, self.evals, self.losses = state['counters'], state['evals'], state['losses']
        self.horizon_minutes = state['horizon_minutes']

    def save(self):
        os.makedirs(self.folder, exist_ok=True)
        save_torch(
            {
                'format': STATE_FORMAT,
                'arm': arm_record(self.arm),
                'precision': self.precision,
                'threads': torch.get_num_threads(),
                'horizon_minutes': self.horizon_minutes,
                'network': self.net.state_dict(),
                'optimizer': self.optimizer.state_dict(),
                'counters': self.counters,
                'evals': self.evals,
                'losses': self.losses
            }, self.state_path)
        summary = {
            'arm': arm_record(self.arm),
            'precision': self.precision,
            'threads': torch.get_num_threads(),
            'horizon_minutes': self.horizon_minutes,
            'counters': self.counters,
            'evals': self.evals,
            'losses': self.losses
        }
        write_bytes(self.evals_path, (json.dumps(summary, indent=1) + '\n').encode())

    @property
    def cpu_minutes(self):
        return self.counters['cpu_seconds'] / 60

    def evaluated(self, minutes):
        return any(abs(e['budget_minutes'] - minutes) < 1e-6 for e in self.evals)

    def step(self, batch):
        """One optimizer step; returns the loss (None when it was not finite and the step was skipped)."""
        progress = self.counters['cpu_seconds'] / (self.horizon_minutes * 60)
        for group in self.optimizer.param_groups:
            group['lr'] = learning_rate(self.arm, progress)
        offset_weight = (
            self.arm.offset_weight *
            max(0.0, 1 - progress / self.arm.offset_fade) if self.offset_loss is not None else 0.0)
        bf16 = self.precision == 'bf16'
        lq = batch['lq'].to(memory_format=torch.channels_last) if bf16 else batch['lq']
        self.net.train()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            if offset_weight > 0:
                out, offsets = self.net(lq, return_offsets=True)
            else:
                out, offsets = self.net(lq), None
        loss = self.pixel_loss(out.float(), batch['gt'])
        if offsets:
            offsets = [dict(item, offset=item['offset'].float()) for item in offsets]
            loss = loss + offset_weight * self.offset_loss(offsets, batch['flow'])
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.counters['skipped_steps'] += 1
            return None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 0.5)
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self, pairs, minutes):
        """Held-out scores now (float32, not charged to the budget), recorded for budget point ``minutes``."""
        start = time.perf_counter()
        self.net.eval()
        with open(os.devnull, 'w') as devnull, contextlib.redirect_stderr(devnull):  # keep the training bar readable
            result = evaluate(self.net, pairs, offset_error=self.arm.has_svd)
        record = {
            'budget_minutes': minutes,
            'cpu_minutes': self.cpu_minutes,
            'iter': self.counters['iter'],
            'wall_minutes': self.counters['wall_seconds'] / 60,
            'psnr_gain': result['gain']['psnr'],
            'ssim_gain': result['gain']['ssim'],
            'restored_psnr': result['restored']['psnr'],
            'blurry_psnr': result['blurry']['psnr']
        }
        if 'offset_error' in result:
            record['offset_error'] = result['offset_error']['learned']
            record['grid_offset_error'] = result['offset_error']['grid']
        self.evals = [e for e in self.evals if abs(e['budget_minutes'] - minutes) > 1e-6] + [record]
        self.evals.sort(key=lambda e: e['budget_minutes'])
        self.counters['eval_seconds'] += time.perf_counter() - start
        return record


def eval_points(target_minutes, budgets, every):
    """Budget points (CPU-minutes) up to ``target_minutes`` where an arm is scored."""
    points = {float(b) for b in budgets if b <= target_minutes} | {float(target_minutes)}
    if every > 0:
        points |= {every * k for k in range(1, int(target_minutes // every) + 1)}
    return sorted(points)


def log(args, text):
    tqdm.write(text, file=sys.stderr)
    os.makedirs(args.work, exist_ok=True)
    with open(osp.join(args.work, 'study.log'), 'a', encoding='utf-8') as f:
        f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {text}\n')


def train_arm(arm, args, target_minutes, pairs, dataset_cache):
    """Train ``arm`` to ``target_minutes`` CPU-minutes (continuing its saved state), scoring it at every budget
    point on the way. Returns its :class:`ArmRun`."""
    horizon = max(args.horizon or max(args.budgets), target_minutes)
    run = ArmRun(arm, args, horizon)
    if target_minutes > run.horizon_minutes + 1e-9:
        raise ValueError(f'arm {arm.name}: its schedule ends at {run.horizon_minutes:g} CPU-minutes (saved state), '
                         f'so it cannot train to {target_minutes:g}; use another --work folder')
    points = [p for p in eval_points(target_minutes, args.budgets, args.eval_every) if not run.evaluated(p)]
    if not points:
        return run
    key = (arm.patch, arm.batch)
    if key not in dataset_cache:
        dataset_cache[key] = training_set(args.data, arm)
    dataset = dataset_cache[key]
    log(
        args, f'{arm.name}: from {run.cpu_minutes:.2f} to {target_minutes:g} CPU-min (iter {run.counters["iter"]}, '
        f'{run.precision}, {torch.get_num_threads()} threads, horizon {run.horizon_minutes:g})')
    bar = tqdm(
        total=round(target_minutes * 60), initial=min(round(run.counters['cpu_seconds']), round(target_minutes * 60)),
        desc=arm.name, unit='cpu-s', file=sys.stderr, dynamic_ncols=True)
    last_save, recent = run.counters['cpu_seconds'], []
    try:
        while points:
            if run.cpu_minutes >= points[0] - 1e-9:
                record = run.evaluate(pairs, points.pop(0))
                run.save()
                last_save = run.counters['cpu_seconds']
                log(
                    args, f'{arm.name} @ {record["budget_minutes"]:g} CPU-min (iter {record["iter"]}, '
                    f'{record["wall_minutes"]:.1f} wall-min): PSNR gain {record["psnr_gain"]:+.3f} dB, SSIM gain '
                    f'{record["ssim_gain"]:+.4f}' +
                    (f', offset error {record["offset_error"]:.3f} px (grid '
                     f'{record["grid_offset_error"]:.3f})' if 'offset_error' in record else ''))
                continue
            start_data = time.perf_counter()
            batch = make_batch(dataset, args.seed, run.counters['iter'], arm.batch)
            run.counters['data_seconds'] += time.perf_counter() - start_data
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            loss = run.step(batch)
            spent = time.process_time() - start_cpu
            run.counters['cpu_seconds'] += spent
            run.counters['wall_seconds'] += time.perf_counter() - start_wall
            run.counters['iter'] += 1
            if loss is not None:
                recent.append(loss)
            if len(recent) == 20:
                run.losses.append([run.cpu_minutes, statistics.fmean(recent)])
                recent = []
            bar.update(min(round(run.counters['cpu_seconds']), round(target_minutes * 60)) - bar.n)
            bar.set_postfix(it=run.counters['iter'], loss=f'{loss:.4f}' if loss is not None else 'skip',
                            s_it=f'{spent:.2f}')
            if run.counters['cpu_seconds'] - last_save >= args.save_every * 60:
                run.save()
                last_save = run.counters['cpu_seconds']
    except KeyboardInterrupt:
        run.save()
        bar.close()
        log(args, f'{arm.name}: interrupted at {run.cpu_minutes:.2f} CPU-min, state saved')
        raise
    bar.close()
    return run


def score(run_or_summary, minutes):
    evals = run_or_summary.evals if isinstance(run_or_summary, ArmRun) else run_or_summary['evals']
    found = [e for e in evals if abs(e['budget_minutes'] - minutes) < 1e-6]
    return found[0]['psnr_gain'] if found else float('-inf')


def run_study(args, arms, pairs):
    """Successive halving over ``args.budgets``; decisions go to ``<work>/decisions.json``."""
    alive, decisions, cache = list(arms), [], {}
    for rung, budget in enumerate(args.budgets):
        runs = {arm.name: train_arm(arm, args, budget, pairs, cache) for arm in alive}
        ranked = sorted(alive, key=lambda a: score(runs[a.name], budget), reverse=True)
        decision = {'budget_minutes': budget, 'ranking': [[a.name, score(runs[a.name], budget)] for a in ranked]}
        if rung < len(args.budgets) - 1:
            keep = ranked[:max(1, math.ceil(len(ranked) * args.keep))]
            keep += [a for a in ranked if a.name in args.always and a not in keep]
            decision['advance'] = [a.name for a in keep]
            alive = keep
        decisions.append(decision)
        write_bytes(osp.join(args.work, 'decisions.json'), (json.dumps(decisions, indent=1) + '\n').encode())
        log(
            args, f'budget {budget:g} CPU-min: ' + ', '.join(f'{n} {g:+.3f}' for n, g in decision['ranking']) +
            (f'; advance: {", ".join(decision["advance"])}' if 'advance' in decision else ''))


# ------------------------------------------------------------------------------------------------------------------
# Calibration, costs and the report
# ------------------------------------------------------------------------------------------------------------------
def calibrate(args, arms):
    """CPU seconds per training step of every arm (after warm-up steps), written to ``<work>/calibration.json``."""
    results = {}
    path = osp.join(args.work, 'calibration.json')
    if osp.isfile(path):
        with open(path, encoding='utf-8') as f:
            results = json.load(f)
    precision = resolve_precision(args.precision)
    for arm in tqdm(arms, desc='calibrate', unit='arm', file=sys.stderr):
        torch.manual_seed(args.seed)
        calib_args = argparse.Namespace(**{**vars(args), 'work': osp.join(args.work, '.calibration')})
        run = ArmRun(arm, calib_args, 60)  # a fresh run, never saved
        dataset = training_set(args.data, arm)
        times = []
        for i in range(args.calibrate_steps + 2):
            batch = make_batch(dataset, args.seed, i, arm.batch)
            start = time.process_time()
            run.step(batch)
            if i >= 2:
                times.append(time.process_time() - start)
        results[arm.name] = {
            'seconds_per_iter': statistics.median(times),
            'precision': precision,
            'threads': torch.get_num_threads(),
            'steps': len(times),
            'dcn_backend': dcn_backend(precision, backward=True)
        }
        log(args, f'calibrate {arm.name}: {results[arm.name]["seconds_per_iter"]:.2f} CPU-s per iteration')
        write_bytes(path, (json.dumps(results, indent=1) + '\n').encode())
    return results


def dcn_backend(precision, backward):
    """The DCN backend ``'auto'`` picks on this CPU for ``precision`` (training or inference)."""
    return select_backend('cpu', torch.bfloat16 if precision == 'bf16' else torch.float32, backward=backward)


def frame_seconds(arm, precision, width, height, repeats=2):
    """Median CPU seconds (1 thread, process time) of one forward pass without autograd, after one warm-up; in
    bfloat16 a channels-last bfloat16 copy of the network runs, as ``sdnet-deblur`` runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net, x = build_network(arm).eval(), torch.rand(1, 3, height, width)
        if precision == 'bf16':
            net, x = inference_copy(net, 'cpu', torch.bfloat16), x.to(memory_format=torch.channels_last).bfloat16()
        times = []
        with torch.inference_mode():
            for i in range(repeats + 1):
                start = time.process_time()
                net(x)
                if i:
                    times.append(time.process_time() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def arm_costs(args, arms):
    """Parameters, GMACs and 1280x720 frame time per network (cached in ``<work>/costs.json``)."""
    path = osp.join(args.work, 'costs.json')
    costs = {}
    if osp.isfile(path):
        with open(path, encoding='utf-8') as f:
            costs = json.load(f)
    precisions = ['fp32'] + (['bf16'] if native_bf16() else [])
    for arm in tqdm(arms, desc='costs', unit='arm', file=sys.stderr):
        key = json.dumps(arm_record(arm)['network'], sort_keys=True)
        if key in costs:
            continue
        entry = {
            'params': count_parameters(build_network(arm)),
            'gmacs': count_macs(lambda: build_network(arm), *FRAME_SIZE) / 1e9
        }
        entry['frame_seconds'] = {p: frame_seconds(arm, p, *FRAME_SIZE) for p in precisions}
        entry['dcn_backend'] = {p: dcn_backend(p, backward=False) for p in precisions}
        costs[key] = entry
        os.makedirs(args.work, exist_ok=True)
        write_bytes(path, (json.dumps(costs, indent=1) + '\n').encode())
    return {arm.name: costs[json.dumps(arm_record(arm)['network'], sort_keys=True)] for arm in arms}


def load_summaries(args, arms):
    summaries = {}
    for arm in arms:
        path = osp.join(args.work, arm.name, 'evals.json')
        if osp.isfile(path):
            with open(path, encoding='utf-8') as f:
                summaries[arm.name] = json.load(f)
    return summaries


def plot_curves(summaries, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, summary in summaries.items():
        evals = summary['evals']
        if evals:
            ax.plot([e['cpu_minutes'] for e in evals], [e['psnr_gain'] for e in evals], marker='o', ms=3, label=name,
                    ls='--' if name.startswith('nafnet') else '-')
    ax.axhline(0, color='grey', lw=0.8)
    ax.set_xlabel('training CPU-minutes')
    ax.set_ylabel('held-out PSNR gain over the blurry input (dB)')
    ax.set_title('Design study: held-out gain against CPU time')
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _gain_at(summaries, name, minutes):
    summary = summaries.get(name)
    found = [e for e in summary['evals'] if abs(e['budget_minutes'] - minutes) < 1e-6] if summary else []
    return found[0] if found else None


def _late_mean(summaries, name, minutes):
    """Mean PSNR gain of the arm's points in the last quarter of a ``minutes`` budget (``0.75 * minutes`` to
    ``minutes``; at the default 5-minute spacing three points for 40), or None: single points move by about 0.1 dB
    from one evaluation to the next, late in a schedule too."""
    summary = summaries.get(name)
    points = [
        e['psnr_gain'] for e in (summary or {}).get('evals', [])
        if 0.75 * minutes - 1e-6 <= e['budget_minutes'] <= minutes + 1e-6
    ]
    return statistics.fmean(points) if points and _gain_at(summaries, name, minutes) else None


def _claim(summaries, budgets, with_arm, without_arm):
    """``(budget, gain with, gain without)`` at the largest budget both arms reached, or None."""
    for budget in sorted(budgets, reverse=True):
        a, b = _gain_at(summaries, with_arm, budget), _gain_at(summaries, without_arm, budget)
        if a and b:
            return budget, a['psnr_gain'], b['psnr_gain']
    return None


def dcn_names(entries):
    """The DCN backends recorded in calibration or cost entries, as Markdown."""
    names = set()
    for entry in entries:
        backend = entry.get('dcn_backend', '?')
        names |= set(backend.values()) if isinstance(backend, dict) else {backend}
    return ' / '.join(f'`{name}`' for name in sorted(names))


def _default_preset_lines(summaries, budgets, speed):
    """The section on the default preset: its arm against the NAFNet-style peers (the backbone alone, which costs
    less at 1280x720, and the peer with blocks at full resolution, which costs more) at the largest shared budget."""
    lines = []
    for peer in DEFAULT_PEERS:
        found = _claim(summaries, budgets, DEFAULT_ARM, peer) if summaries else None
        if not found:
            continue
        budget, gain, peer_gain = found
        late, peer_late = _late_mean(summaries, DEFAULT_ARM, budget), _late_mean(summaries, peer, budget)
        line = f'- against `{peer}` at {budget:g} CPU-minutes: {gain:+.3f} / {peer_gain:+.3f} dB'
        if late is not None and peer_late is not None:
            line += f' (means over the last quarter: {late:+.3f} / {peer_late:+.3f} dB)'
        if peer in speed and DEFAULT_ARM in speed:
            line += f'; 1280x720 frame {speed[DEFAULT_ARM]:.2f} / {speed[peer]:.2f} s'
        lines.append(line + '.')
    if not lines:
        return []
    text = (f'`SDNet()` builds preset `light` version 2: the network of arm `{DEFAULT_ARM}` (the `light` backbone '
            'without blocks at full resolution, SVD modules at 1/4 and 1/8), and the default weights use that arm\'s '
            'recipe (flow guidance fading out over the first quarter of the schedule).')
    if DEFAULT_ARM in speed and 'nafnet32' in speed:
        text += (f' A 1280x720 frame takes {speed[DEFAULT_ARM]:.2f} s, {speed["nafnet32"] / speed[DEFAULT_ARM]:.1f}x '
                 f'faster than the width-32 GoPro configuration `nafnet32` ({speed["nafnet32"]:.2f} s).')
    return [
        '', '## The default preset', '', text, '', f'Held-out gain of `{DEFAULT_ARM}` / the NAFNet-style peer:', '',
        *lines
    ]


def write_report(args, arms, out_path):
    """``docs/design_study.md`` and ``docs/images/design_study_gain.png`` from the work folder."""
    costs = arm_costs(args, arms)
    summaries = load_summaries(args, arms)
    calibration = {}
    if osp.isfile(osp.join(args.work, 'calibration.json')):
        with open(osp.join(args.work, 'calibration.json'), encoding='utf-8') as f:
            calibration = json.load(f)
    decisions = []
    if osp.isfile(osp.join(args.work, 'decisions.json')):
        with open(osp.join(args.work, 'decisions.json'), encoding='utf-8') as f:
            decisions = json.load(f)
    budgets = sorted({e['budget_minutes'] for s in summaries.values() for e in s['evals']} | set(args.budgets))
    image_rel = 'images/design_study_gain.png'
    work_rel = osp.relpath(args.work, ROOT) if osp.abspath(args.work).startswith(ROOT + os.sep) else args.work
    lines = [
        '# Design study: which deblurring design learns most per CPU-hour',
        '',
        '```bash',
        'python benchmarks/design_study.py --prepare                    # data: datasets/study/{photos,train,eval}',
        'python benchmarks/design_study.py --calibrate                  # CPU seconds per iteration of every arm',
        'python benchmarks/design_study.py                              # successive halving; rerun to continue',
        'python benchmarks/design_study.py --arm light_m --minutes 40   # one arm to 40 CPU-minutes',
        'python benchmarks/design_study.py --report                     # this page and its plot',
        '```',
        '',
        'Generated by `python benchmarks/design_study.py --report` from the work folder of the study '
        f'(`{work_rel}`); method in the docstring of `benchmarks/design_study.py`. Data: '
        '800 renders of 256x256 from the training photographs (`datasets/study/train`), scored on 44 renders of '
        '384x256 from held-out photographs (`datasets/study/eval`); `--prepare` makes both. Every arm: AdamW '
        '(betas 0.9/0.99, weight decay 1e-4), 2% warm-up then cosine to zero at the horizon '
        f'({max(args.budgets):g} CPU-minutes), gradient clipping 0.5, seed {args.seed}, random crops with flips '
        'and transposes; flow-guided arms add the offset loss (weight 0.1, 0.01 for the `_w01` arms, fading to 0 at '
        'the horizon, or at a quarter of it for `light_warm` and `light_fine`; moving pixels only).',
        '',
        '## Arms and their cost',
        '',
        'Parameters; GMACs of one 1280x720 frame (deformable convolutions counted as their equivalent conv); CPU '
        'time of one 1280x720 frame without autograd, 1 thread, float32 and bfloat16 + channels-last, the best in '
        f'bold (median of 2 after a warm-up, DCN backend `auto`, which picked {dcn_names(costs.values())}; cached '
        f'in `{work_rel}/costs.json`: delete it to measure again, e.g. after a DCN backend change or on an idle '
        'machine).',
        '',
        '| arm | what | lr | loss | crops | parameters | GMACs 720p | 720p fp32 (s) | 720p bf16 (s) |',
        '|---|---|---:|---|---|---:|---:|---:|---:|',
    ]
    for arm in arms:
        cost = costs[arm.name]
        seconds = cost['frame_seconds']
        best = min(seconds, key=seconds.get)
        cells = [
            f'**{seconds[p]:.2f}**' if p == best else f'{seconds[p]:.2f}' for p in ('fp32', 'bf16') if p in seconds
        ]
        loss = arm.pixel_loss + ('' if arm.offset_loss == 'none' else f' + offset ({arm.offset_loss})')
        lines.append(f'| `{arm.name}` | {arm.what} | {arm.lr:g} | {loss} | {arm.batch}x{arm.patch}² | '
                     f'{cost["params"] / 1e6:.2f} M | {cost["gmacs"]:.1f} | ' + ' | '.join(cells) + ' |')
    if calibration:
        lines += [
            '',
            '## Planned budgets (calibration)',
            '',
            'CPU seconds per training iteration (median of a few steps after two warm-up steps, '
            f'{next(iter(calibration.values()))["threads"]} thread(s), '
            f'{next(iter(calibration.values()))["precision"]}, DCN backend {dcn_names(calibration.values())}), and '
            'the iterations each budget buys:',
            '',
            '| arm | CPU-s / iteration | ' + ' | '.join(f'iterations in {b:g} CPU-min' for b in args.budgets) + ' |',
            '|---|---:|' + '---:|' * len(args.budgets),
        ]
        for arm in arms:
            if arm.name in calibration:
                sec = calibration[arm.name]['seconds_per_iter']
                lines.append(f'| `{arm.name}` | {sec:.2f} | ' + ' | '.join(f'{b * 60 / sec:.0f}'
                                                                           for b in args.budgets) + ' |')
        lines += [
            '', f'Training CPU-minutes of successive halving with {len(arms)} arms, keeping {args.keep:g} '
            f'of them per rung plus {len(args.always)} arm(s) that always advance (held-out evaluations come '
            'on top; with the default single thread a CPU-minute takes at least a wall minute, see the '
            'docstring on why not two threads):', '', '| budgets (CPU-min) | arms per rung | training CPU-minutes |',
            '|---|---|---:|'
        ]
        schedules = [tuple(args.budgets)
                     ] + [s for s in ((10, 20, 40), (15, 30, 60), (10, 20, 40, 80)) if s != tuple(args.budgets)]
        for schedule in schedules:
            alive, counts, total, previous = len(arms), [], 0.0, 0
            for budget in schedule:
                counts.append(alive)
                total += alive * (budget - previous)
                previous = budget
                alive = min(alive, math.ceil(alive * args.keep) + len(args.always))
            lines.append(f'| {", ".join(f"{b:g}" for b in schedule)} | {", ".join(map(str, counts))} | '
                         f'{total:.0f} |')
    lines += ['', '## Held-out gain at each budget', '']
    if summaries:
        lines += [
            'PSNR gain in dB (SSIM gain) over the blurry input; offset error of the sampling points against '
            'the exact flows in feature pixels (regular grid in brackets); iterations reached.', '',
            '| arm | ' + ' | '.join(f'{b:g} CPU-min' for b in budgets) + f' | mean of the last quarter of '
            f'{max(budgets):g} | offset error at the last point | iterations | wall-min |',
            '|---|' + '---:|' * (len(budgets) + 4)
        ]
        for arm in arms:
            summary = summaries.get(arm.name)
            if not summary or not summary['evals']:
                continue
            cells = []
            for b in budgets:
                e = _gain_at(summaries, arm.name, b)
                cells.append(f'{e["psnr_gain"]:+.3f} ({e["ssim_gain"]:+.4f})' if e else '')
            last = summary['evals'][-1]
            offset = (f'{last["offset_error"]:.3f} ({last["grid_offset_error"]:.3f})' if 'offset_error' in last else '')
            late = _late_mean(summaries, arm.name, max(budgets))
            late = f'{late:+.3f}' if late is not None else ''
            lines.append(f'| `{arm.name}` | ' + ' | '.join(cells) + f' | {late} | {offset} | '
                         f'{summary["counters"]["iter"]} | {summary["counters"]["wall_seconds"] / 60:.0f} |')
        plot_curves(summaries, osp.join(osp.dirname(out_path), image_rel))
        lines += ['', f'![held-out gain against CPU minutes]({image_rel})']
    else:
        lines.append('No arm has been trained yet.')
    if decisions:
        lines += ['', '## Successive halving', '']
        for d in decisions:
            text = ', '.join(f'`{n}` {g:+.3f}' for n, g in d['ranking'])
            lines.append(f'- {d["budget_minutes"]:g} CPU-min: {text}' +
                         (f'; advanced: {", ".join(d["advance"])}' if 'advance' in d else ''))
    speed = {name: min(cost['frame_seconds'].values()) for name, cost in costs.items()}
    lines += _default_preset_lines(summaries, budgets, speed)
    if 'nafnet32' in speed:
        lines += [
            '', '## Speed against the NAFNet-style GoPro configuration', '',
            '1280x720 frame, each network at its best precision, same run (in brackets: how many times '
            'faster than `nafnet32`): ' +
            ', '.join(f'`{name}` {seconds:.2f} s ({speed["nafnet32"] / seconds:.1f}x)'
                      for name, seconds in speed.items() if name != 'nafnet32' and name in
                      ('base', 'light_s', 'light_m', 'light_l', 'light', 'light_fine', 'light_lean_w01',
                       'light_lean_warm', 'nafnet_light', 'nafnet_lean')) + f'; `nafnet32` {speed["nafnet32"]:.2f} s.'
        ]
    claims = [
        ('SVD modules help (the backbone alone is worse)', 'base_noflow', 'base_plain'),
        ('flow guidance helps (SVD with the offset loss beats SVD without)', 'base', 'base_noflow'),
        ('order-invariant targets beat ordered ones', 'base', 'base_ordered'),
        ('light design: SVD modules help', 'light_m_noflow', 'light_m_plain'),
        ('light design: flow guidance helps', 'light_m', 'light_m_noflow'),
        ('gated light SDNet beats the NAFNet-style peer of the same 720p cost', 'light_m', 'nafnet_light'),
        ('NAFNet-style backbone: SVD modules help (the peer is this backbone alone)', 'light_noflow', 'nafnet_light'),
        ('NAFNet-style backbone: flow guidance helps', 'light', 'light_noflow'),
        ('NAFNet-style backbone: flow guidance in the first quarter only helps', 'light_warm', 'light_noflow'),
        ('light SDNet beats the NAFNet-style peer of the same 720p cost', 'light', 'nafnet_light'),
        ('light SDNet, early flow guidance, beats the NAFNet-style peer', 'light_warm', 'nafnet_light'),
        ('SVD modules at 1/2 and 1/4: flow guidance (first quarter) helps', 'light_fine', 'light_fine_noflow'),
        ('SVD modules at 1/2 and 1/4 beat those at 1/4 and 1/8 (no guidance)', 'light_fine_noflow', 'light_noflow'),
        ('light SDNet, SVD at 1/2 and 1/4, guided, beats the NAFNet-style peer', 'light_fine', 'nafnet_light'),
        ('NAFNet-style backbone: weak flow guidance (weight 0.01) helps', 'light_w01', 'light_noflow'),
        ('weak flow guidance (0.01) beats the shipped weight (0.1)', 'light_w01', 'light'),
        ('light SDNet, weak flow guidance, beats the NAFNet-style peer', 'light_w01', 'nafnet_light'),
        ('SVD modules at 1/2 and 1/4: weak flow guidance helps', 'light_fine_w01', 'light_fine_noflow'),
        ('light SDNet, SVD at 1/2 and 1/4, weak guidance, beats the NAFNet-style peer', 'light_fine_w01',
         'nafnet_light'),
        ('lean light SDNet (no full-resolution blocks): weak flow guidance helps', 'light_lean_w01',
         'light_lean_noflow'),
        ('lean light SDNet, weak guidance, beats the NAFNet-style peer (which costs more at 720p)', 'light_lean_w01',
         'nafnet_light'),
        ('light SDNet without full-resolution blocks learns as well as with them (early guidance)', 'light_lean_warm',
         'light_warm'),
        ('lean light SDNet, early guidance, beats the NAFNet-style peer (which costs more at 720p)', 'light_lean_warm',
         'nafnet_light'),
        ('lean light SDNet: SVD modules with early guidance beat the backbone alone (NAFNet-style, less at 720p)',
         'light_lean_warm', 'nafnet_lean'),
        ('lean light SDNet: SVD modules at 1/2 and 1/4 with weak guidance beat the backbone alone', 'light_lean_w01',
         'nafnet_lean'),
    ]
    lines += [
        '', '## What the paper claims and what we measure', '',
        'The paper reports that SVD modules help, that flow guidance helps, and that SDNet is light and '
        'real-time (on a GPU). These are short CPU budgets: they rank how fast designs start to learn, not where they '
        'end after a full GPU schedule. Single points move by about 0.1 dB from one evaluation to the next, so '
        'the last two columns compare the means over the last quarter of the budget too.', '',
        '| claim | arms (with / without) | budget | gain with | gain without | agrees | last-quarter mean with / '
        'without | agrees |', '|---|---|---:|---:|---:|---|---|---|'
    ]
    for claim, with_arm, without_arm in claims:
        found = _claim(summaries, budgets, with_arm, without_arm)
        if found:
            budget, a, b = found
            late_a, late_b = _late_mean(summaries, with_arm, budget), _late_mean(summaries, without_arm, budget)
            late = (f'{late_a:+.3f} / {late_b:+.3f} | {"yes" if late_a > late_b else "no"}'
                    if late_a is not None and late_b is not None else '|')
            lines.append(f'| {claim} | `{with_arm}` / `{without_arm}` | {budget:g} | {a:+.3f} | {b:+.3f} | '
                         f'{"yes" if a > b else "no"} | {late} |')
        else:
            lines.append(f'| {claim} | `{with_arm}` / `{without_arm}` | not measured yet | | | | | |')
    text = '\n'.join(lines) + '\n'
    write_bytes(out_path, text.encode())
    return text


# ------------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------------
def prepare(args):
    """Photographs, held-out renders and training renders under ``args.data`` (each step skipped when done)."""
    for name, command in PREPARE_STEPS:
        target = osp.join(args.data, name)
        if osp.isdir(target):
            print(f'{target}: present, kept')
            continue
        command = [sys.executable] + [part.format(data=args.data) for part in command]
        print('running', ' '.join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


def check_data(data):
    train = osp.join(data, 'train')
    if not osp.isdir(train):
        raise FileNotFoundError(f'no training renders in {train}; run `python benchmarks/design_study.py --prepare` '
                                f'first (or pass --data)')
    return find_pairs(osp.join(data, 'eval'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arm', nargs='+', default=None, choices=list(ARMS_BY_NAME),
                        help='train only these arms (with --minutes) or restrict the study to them')
    parser.add_argument('--minutes', type=float, default=None, help='train --arm to this many CPU-minutes')
    parser.add_argument('--budgets', type=float, nargs='+', default=list(DEFAULT_BUDGETS),
                        help='successive-halving budgets in CPU-minutes (default: 10 20 40)')
    parser.add_argument('--keep', type=float, default=0.5, help='share of arms advanced per rung (default: 0.5)')
    parser.add_argument('--always', nargs='*', default=list(DEFAULT_ALWAYS),
                        help=f'arms that always advance (default: {" ".join(DEFAULT_ALWAYS)})')
    parser.add_argument('--horizon', type=float, default=None,
                        help='learning-rate schedule length in CPU-minutes (default: the last budget)')
    parser.add_argument('--eval-every', type=float, default=5, help='extra scoring points, CPU-minutes (default: 5)')
    parser.add_argument('--save-every', type=float, default=2, help='save the state every N CPU-minutes (default: 2)')
    parser.add_argument('--data', default=osp.join(ROOT, DEFAULT_DATA), help='data folder (default: datasets/study)')
    parser.add_argument('--work', default=osp.join(ROOT, DEFAULT_WORK),
                        help='work folder with the per-arm states (default: experiments/design_study)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default: 1; 2 only on an idle machine, see above)')
    parser.add_argument('--precision', choices=('auto', 'bf16', 'fp32'), default='auto',
                        help='auto: bfloat16 autocast + channels-last where the CPU has native bfloat16 (default)')
    parser.add_argument('--seed', type=int, default=0, help='seed of initialisation and batches (default: 0)')
    parser.add_argument('--prepare', action='store_true', help='make the data under --data, then stop')
    parser.add_argument('--calibrate', action='store_true', help='CPU seconds per iteration of every arm, then stop')
    parser.add_argument('--calibrate-steps', type=int, default=3, help='timed steps per arm (default: 3)')
    parser.add_argument('--report', nargs='?', const=osp.join(ROOT, 'docs', 'design_study.md'), default=None,
                        metavar='PATH', help='write the report (default: docs/design_study.md), then stop')
    args = parser.parse_args(argv)
    args.budgets = sorted(args.budgets)
    if args.minutes is not None and not args.arm:
        parser.error('--minutes needs --arm')
    if any(b <= 0 for b in args.budgets) or (args.minutes is not None and args.minutes <= 0):
        parser.error('budgets and --minutes must be positive')
    if not 0 < args.keep <= 1 or args.threads < 1 or args.calibrate_steps < 1:
        parser.error('--keep must be in (0, 1], --threads and --calibrate-steps at least 1')
    unknown = [name for name in args.always if name not in ARMS_BY_NAME]
    if unknown:
        parser.error(f'--always: unknown arm(s) {", ".join(unknown)}')
    if args.precision == 'bf16' and not native_bf16():
        parser.error('--precision bf16: this CPU has no native bfloat16; use fp32')
    return args


def _stop(signum, frame):
    raise KeyboardInterrupt  # a terminated run saves its state like an interrupted one


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    arms = [ARMS_BY_NAME[name] for name in args.arm] if args.arm else list(ARMS)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _stop) if in_main_thread else None
    try:
        if args.prepare:
            return prepare(args)
        if args.report:
            print(write_report(args, arms, args.report))
            return None
        pairs = check_data(args.data)
        if args.calibrate:
            return calibrate(args, arms)
        if args.minutes is not None:
            for arm in arms:
                train_arm(arm, args, args.minutes, pairs, {})
            return None
        return run_study(args, arms, pairs)
    except (FileNotFoundError, ValueError, subprocess.CalledProcessError) as error:
        sys.exit(f'error: {error}')
    except KeyboardInterrupt:
        sys.exit('interrupted; the state of every arm is saved, run the same command to continue')
    finally:
        torch.set_num_threads(threads)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == '__main__':
    main()
