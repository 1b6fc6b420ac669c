import os

import cv2
import numpy as np
import pytest
import torch

import sdnet_plugin.data.blur_sharp_flow_dataset as dataset_module

from basicsr.data import build_dataloader, build_dataset  # isort: skip (after sdnet_plugin's compatibility fixes)
from sdnet_plugin.data.flow_utils import flip_transpose_image, reblur


def _disk_opt(root, **extra):
    return dict({'name': 'disk', 'type': 'BlurSharpFlowDataset', 'dataroot': root, 'phase': 'val'}, **extra)


def _lmdb_opt(paths, **extra):
    return dict(
        {
            'name': 'lmdb',
            'type': 'BlurSharpFlowDataset',
            'io_backend': {
                'type': 'lmdb'
            },
            'dataroot_lq': paths['blur'],
            'dataroot_gt': paths['sharp'],
            'dataroot_flow': paths['flow'],
            'phase': 'val'
        }, **extra)


def test_disk_and_lmdb_return_identical_samples(synthetic_gopro):
    disk = build_dataset(_disk_opt(synthetic_gopro['root']))
    lmdb = build_dataset(_lmdb_opt(synthetic_gopro['lmdb']))
    assert len(disk) == len(lmdb) == synthetic_gopro['count']
    w, h = synthetic_gopro['size']
    for i in range(len(disk)):
        a, b = disk[i], lmdb[i]
        assert a['lq'].shape == (3, h, w) and a['flow'].shape == (4, h, w) and a['flow'].dtype == torch.float32
        for key in ('lq', 'gt', 'flow'):
            assert torch.equal(a[key], b[key])
        seq, name = synthetic_gopro['keys'][i].split('/')
        assert a['lq_path'] == os.path.join(synthetic_gopro['root'], seq, 'blur', f'{name}.png')
        assert b['lq_path'] == synthetic_gopro['keys'][i]
    # same random crops and flips for the same seed
    train = dict(phase='train', gt_size=32, use_hflip=True, use_vflip=True, use_rot=True)
    disk, lmdb = build_dataset(_disk_opt(synthetic_gopro['root'],
                                         **train)), build_dataset(_lmdb_opt(synthetic_gopro['lmdb'], **train))
    for i in range(3):
        dataset_module.random.seed(i)
        a = disk[i]
        dataset_module.random.seed(i)
        b = lmdb[i]
        assert a['lq'].shape == (3, 32, 32)
        assert all(torch.equal(a[k], b[k]) for k in ('lq', 'gt', 'flow'))


@pytest.mark.parametrize('phase', ['val', 'train'])
def test_use_flow_false_and_blur_gamma(synthetic_gopro, phase):
    opt = _disk_opt(synthetic_gopro['root'], use_flow=False, blur_folder='blur_gamma', phase=phase)
    if phase == 'train':
        opt.update(gt_size=32, use_hflip=True, use_vflip=True, use_rot=True)
    sample = build_dataset(opt)[0]
    assert 'flow' not in sample and sample['lq_path'].split(os.sep)[-2] == 'blur_gamma'
    assert sample['lq'].shape == sample['gt'].shape == ((3, 32, 32) if phase == 'train' else (3, 48, 64))


class _ForcedFlags:
    """Stands in for the ``random`` module: each flag draw returns 'apply' or 'skip' as told."""

    def __init__(self, flags):
        self.flags = list(flags)

    def random(self):
        return 0.0 if self.flags.pop(0) else 0.99


@pytest.mark.parametrize('flags', [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)])
def test_augmentations_keep_triplets_physically_consistent(make_synthetic_gopro, monkeypatch, flags):
    tree = make_synthetic_gopro(count=2, size=(40, 40), blur_scale=1.5, lmdb=False)
    plain = build_dataset(_disk_opt(tree['root']))
    augmented = build_dataset(
        _disk_opt(tree['root'], phase='train', gt_size=40, use_hflip=True, use_vflip=True, use_rot=True))
    for i in range(len(plain)):
        monkeypatch.setattr(dataset_module, 'random', _ForcedFlags(flags))
        aug = {k: v.numpy().transpose(1, 2, 0) if torch.is_tensor(v) else v for k, v in augmented[i].items()}
        ref = {k: v.numpy().transpose(1, 2, 0) if torch.is_tensor(v) else v for k, v in plain[i].items()}
        assert np.array_equal(aug['lq'], flip_transpose_image(ref['lq'], *flags))
        # re-blurring along the transformed flow gives the transformed re-blur, and explains the blurry image
        reblurred = reblur(aug['gt'], aug['flow'], samples_per_side=8)
        assert np.allclose(reblurred, flip_transpose_image(reblur(ref['gt'], ref['flow'], samples_per_side=8), *flags),
                           atol=1e-4)
        err_reblur = np.mean((reblurred - aug['lq'])**2)
        err_identity = np.mean((aug['gt'] - aug['lq'])**2)
        assert err_reblur < err_identity / 2


def test_works_with_basicsr_dataloader(synthetic_gopro):
    opt = _lmdb_opt(synthetic_gopro['lmdb'], phase='train', gt_size=32, use_hflip=True, use_rot=True,
                    num_worker_per_gpu=0, batch_size_per_gpu=2, use_shuffle=True)
    loader = build_dataloader(build_dataset(opt), opt, num_gpu=0, dist=False, sampler=None, seed=0)
    batch = next(iter(loader))
    assert batch['lq'].shape == (2, 3, 32, 32) and batch['flow'].shape == (2, 4, 32, 32)


def _first(tree, folder):
    seq = sorted(os.listdir(tree['root']))[0]
    return os.path.join(tree['root'], seq, folder, '000000.png')


def test_error_cases_name_the_file(make_synthetic_gopro, tmp_path):
    tree = make_synthetic_gopro(count=2, lmdb=False)
    flow, sharp, blur = _first(tree, 'flow'), _first(tree, 'sharp'), _first(tree, 'blur')

    with pytest.raises(ValueError, match='larger than'):
        build_dataset(_disk_opt(tree['root'], phase='train', gt_size=64))[0]

    os.rename(flow, flow + '.bak')
    with pytest.raises(FileNotFoundError, match='flow missing for .*000000.png'):
        build_dataset(_disk_opt(tree['root']))
    build_dataset(_disk_opt(tree['root'], use_flow=False))  # fine without flows
    os.rename(flow + '.bak', flow)

    os.rename(sharp, sharp + '.bak')
    with pytest.raises(FileNotFoundError, match='sharp image missing'):
        build_dataset(_disk_opt(tree['root']))
    os.rename(sharp + '.bak', sharp)

    original = open(blur, 'rb').read()
    with open(blur, 'wb') as f:
        f.write(original[:len(original) // 3])
    with pytest.raises(IOError, match='truncated image: .*blur.*000000.png'):
        build_dataset(_disk_opt(tree['root']))[0]
    cv2.imwrite(blur, np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match='sizes disagree: .*000000.png 12x10'):
        build_dataset(_disk_opt(tree['root']))[0]

    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='no blurry images found in'):
        build_dataset(_disk_opt(str(empty)))


def test_lmdb_with_missing_keys_is_rejected(make_synthetic_gopro):
    tree = make_synthetic_gopro(count=2)
    meta = os.path.join(tree['lmdb']['flow'], 'meta_info.txt')
    lines = open(meta).read().splitlines()
    with open(meta, 'w') as f:
        f.write('\n'.join(lines[1:]) + '\n')
    with pytest.raises(FileNotFoundError, match='train_flow.lmdb lacks 1 key'):
        build_dataset(_lmdb_opt(tree['lmdb']))


def test_corrupt_lmdb_entry_names_database_and_key(make_synthetic_gopro):
    import lmdb
    tree = make_synthetic_gopro(count=2)
    env = lmdb.open(tree['lmdb']['flow'], map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(tree['keys'][1].encode(), b'not a png')
    env.close()
    dataset = build_dataset(_lmdb_opt(tree['lmdb']))
    dataset[0]
    with pytest.raises(IOError, match=f'train_flow.lmdb:{tree["keys"][1]}: unreadable'):
        dataset[1]
