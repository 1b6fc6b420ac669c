import os
import random

import numpy as np
import torch
from basicsr.data.transforms import paired_random_crop
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from sdnet_plugin.data.flow_io import decode_flow
from sdnet_plugin.data.flow_utils import flip_transpose_flow, flip_transpose_image
from sdnet_plugin.data.gopro_layout import read_meta_keys, scan_gopro_split
from sdnet_plugin.image_io import ImageReadError, decode_image

__all__ = ['BlurSharpFlowDataset']


@DATASET_REGISTRY.register()
class BlurSharpFlowDataset(data.Dataset):
    """(blurry, sharp, bi-directional flow) triplets from a GoPro-layout split or three LMDB databases.

    Disk layout: ``<dataroot>/<SEQ>/{blur|blur_gamma, sharp, flow}/NNNNNN.png``. LMDB: the databases written by
    ``datasets_prep/create_lmdb.py`` (keys ``SEQ/NNNNNN``, listed in the blurry database's ``meta_info.txt``).
    Flows are 16-bit PNGs (see :mod:`sdnet_plugin.data.flow_io`), ``(u_first, v_first, u_last, v_last)`` in pixels.

    In the ``train`` phase the three images are cropped at the same random place and flipped / transposed alike;
    flows are transformed with them (a horizontal flip mirrors the field and negates u, a vertical flip negates v,
    a transpose swaps u and v).

    Args:
        opt (dict): Options:
            io_backend (dict): ``{'type': 'disk'}`` or ``{'type': 'lmdb'}``.
            dataroot (str): Disk backend: the split folder.
            blur_folder (str): Disk backend: ``'blur'`` or ``'blur_gamma'``. Default: ``'blur'``.
            sharp_folder (str): Disk backend. Default: ``'sharp'``.
            flow_folder (str): Disk backend. Default: ``'flow'``.
            dataroot_lq, dataroot_gt, dataroot_flow (str): LMDB backend: blurry, sharp and flow databases.
            use_flow (bool): Read flows. Default: True.
            phase (str): ``'train'`` crops and augments; anything else returns whole images. Default: ``'train'``
                when ``gt_size`` is given, else ``'val'``.
            gt_size (int): Training crop size.
            use_hflip (bool): Random horizontal flips. Default: False.
            use_vflip (bool): Random vertical flips. Default: False.
            use_rot (bool): Random transposes (with the flips: all eight 90-degree rotations / flips).
                Default: False.

    Returns (per item):
        dict: ``lq``, ``gt``: ``(3, H, W)`` float32 RGB in ``[0, 1]``; ``flow``: ``(4, H, W)`` float32 pixels (only
        with ``use_flow``); ``lq_path``, ``gt_path``: file paths (disk) or keys (LMDB).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.io_backend_opt = dict(opt.get('io_backend', {'type': 'disk'}))
        self.file_client = None
        self.use_flow = opt.get('use_flow', True)
        self.gt_size = opt.get('gt_size')
        self.phase = opt.get('phase', 'train' if self.gt_size else 'val')
        if self.phase == 'train' and not self.gt_size:
            raise ValueError('BlurSharpFlowDataset: the train phase needs gt_size')
        self.backend = self.io_backend_opt['type']
        if self.backend == 'lmdb':
            self.samples = self._scan_lmdb()
        elif self.backend == 'disk':
            self.samples = [{
                'lq': s['blur'],
                'gt': s['sharp'],
                'flow': s['flow']
            } for s in scan_gopro_split(opt['dataroot'], blur_folder=opt.get('blur_folder', 'blur'),
                                        sharp_folder=opt.get('sharp_folder', 'sharp'), flow_folder=opt.get(
                                            'flow_folder', 'flow'), use_flow=self.use_flow)]
        else:
            raise ValueError(f"BlurSharpFlowDataset: io_backend type must be 'disk' or 'lmdb', got {self.backend!r}")

    def _scan_lmdb(self):
        roots = {'lq': self.opt['dataroot_lq'], 'gt': self.opt['dataroot_gt']}
        if self.use_flow:
            if not self.opt.get('dataroot_flow'):
                raise ValueError('BlurSharpFlowDataset: use_flow needs dataroot_flow with the LMDB backend')
            roots['flow'] = self.opt['dataroot_flow']
        for name, root in roots.items():
            if not str(root).endswith('.lmdb'):
                raise ValueError(f'dataroot_{name} must be an LMDB folder ending with .lmdb, got {root}')
            if not os.path.isfile(os.path.join(root, 'data.mdb')):
                raise FileNotFoundError(f'{root} has no data.mdb: not an LMDB database (incomplete copy?)')
        keys = {name: [key for key, _ in read_meta_keys(root)] for name, root in roots.items()}
        if not keys['lq']:
            raise FileNotFoundError(f'no entries in {roots["lq"]}/meta_info.txt')
        for name in roots:
            missing = sorted(set(keys['lq']) - set(keys[name]))
            if missing:
                raise FileNotFoundError(f'{roots[name]} lacks {len(missing)} key(s) of {roots["lq"]}, '
                                        f'e.g. {missing[0]}')
        self.io_backend_opt['db_paths'] = list(roots.values())
        self.io_backend_opt['client_keys'] = list(roots.keys())
        return [{name: key for name in roots} for key in keys['lq']]

    def _describe(self, sample, name):
        """The file, or database and key, of one image of a sample (for error messages)."""
        if self.backend == 'lmdb':
            return f'{self.opt["dataroot_" + name]}:{sample[name]}'
        return sample[name]

    def _get_bytes(self, sample, name):
        if self.backend == 'lmdb':
            content = self.file_client.get(sample[name], name)
            if content is None:
                raise IOError(f'{self._describe(sample, name)}: key missing')
            return content
        try:
            return self.file_client.get(sample[name])
        except OSError as error:
            raise IOError(f'cannot read {sample[name]}: {error}') from error

    def _read_image(self, sample, name):
        """float32 RGB ``(H, W, 3)`` in ``[0, 1]`` (:func:`sdnet_plugin.image_io.decode_image`; alpha dropped)."""
        content = self._get_bytes(sample, name)
        try:
            return decode_image(content, self._describe(sample, name)).rgb
        except ImageReadError as error:
            raise IOError(f'unreadable or truncated image: {self._describe(sample, name)}') from error

    def __getitem__(self, index):
        if self.file_client is None:
            backend = self.io_backend_opt.copy()
            self.file_client = FileClient(backend.pop('type'), **backend)
        sample = self.samples[index]
        img_lq = self._read_image(sample, 'lq')
        img_gt = self._read_image(sample, 'gt')
        images = {'gt': img_gt, 'lq': img_lq}
        if self.use_flow:
            images['flow'] = decode_flow(self._get_bytes(sample, 'flow'), self._describe(sample, 'flow'))
        sizes = {name: img.shape[:2] for name, img in images.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError('sizes disagree: ' + ', '.join(f'{self._describe(sample, n)} {s[1]}x{s[0]}'
                                                            for n, s in sizes.items()))

        if self.phase == 'train':
            h, w = sizes['lq']
            if self.gt_size > min(h, w):
                raise ValueError(f'gt_size {self.gt_size} is larger than {self._describe(sample, "lq")} ({w}x{h})')
            others = [images['gt']] + ([images['flow']] if self.use_flow else [])
            others, img_lq = paired_random_crop(others, images['lq'], self.gt_size, 1, sample['gt'])
            if not isinstance(others, list):  # BasicSR unwraps one-element lists
                others = [others]
            images = dict(zip(['gt', 'flow'], others), lq=img_lq)
            hflip = self.opt.get('use_hflip', False) and random.random() < 0.5
            vflip = self.opt.get('use_vflip', False) and random.random() < 0.5
            transpose = self.opt.get('use_rot', False) and random.random() < 0.5
            for name in ('lq', 'gt'):
                images[name] = flip_transpose_image(images[name], hflip, vflip, transpose)
            if self.use_flow:
                images['flow'] = flip_transpose_flow(images['flow'], hflip, vflip, transpose)

        img_gt, img_lq = img2tensor([images['gt'], images['lq']], bgr2rgb=False, float32=True)
        out = {'lq': img_lq, 'gt': img_gt, 'lq_path': sample['lq'], 'gt_path': sample['gt']}
        if self.use_flow:
            out['flow'] = torch.from_numpy(np.ascontiguousarray(images['flow'].transpose(2, 0, 1)))
        return out

    def __len__(self):
        return len(self.samples)
