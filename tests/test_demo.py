"""The demo's comparison step: side-by-side pictures and blurry-vs-restored metrics."""
import os

import cv2
import pytest

from sdnet_plugin import demo
from sdnet_plugin.demo import compare


def test_compare_writes_pictures_and_measures_both_images(synthetic_gopro, tmp_path):
    restored_dir = tmp_path / 'restored'
    restored_dir.mkdir()
    keys = synthetic_gopro['keys']
    for i, key in enumerate(keys):
        sequence, frame = key.split('/')
        source = 'sharp' if i == 0 else 'blur'  # one perfect restoration, the others unchanged
        image = cv2.imread(os.path.join(synthetic_gopro['root'], sequence, source, f'{frame}.png'))
        cv2.imwrite(str(restored_dir / f'{sequence}_{frame}_restored.png'), image)

    summary = compare(synthetic_gopro['root'], str(restored_dir), 'restored', str(tmp_path / 'side_by_side'))

    rows = {row['name']: row for row in summary['images']}
    assert len(rows) == len(keys)
    first = keys[0].replace('/', '_')
    assert rows[first]['psnr_restored'] == float('inf') and rows[first]['ssim_restored'] == pytest.approx(1.0)
    for key in keys[1:]:
        row = rows[key.replace('/', '_')]
        assert row['psnr_restored'] == row['psnr_blurry'] < 60
    width, height = synthetic_gopro['size']
    picture = cv2.imread(str(tmp_path / 'side_by_side' / f'{first}.png'))
    assert picture.shape == (height + 22, 3 * width + 8, 3)


def test_compare_names_a_missing_restored_image(synthetic_gopro, tmp_path):
    from sdnet_plugin.demo import StepError
    with pytest.raises(StepError, match='the test step wrote no'):
        compare(synthetic_gopro['root'], str(tmp_path), 'restored', str(tmp_path / 'out'))


def test_fine_tuning_builds_the_network_the_weights_were_trained_with(tmp_path):
    import torch
    from basicsr.archs import build_network
    from basicsr.utils.options import _postprocess_yml_value

    from sdnet_plugin.archs.sdnet_arch import SDNet
    from sdnet_plugin.demo import StepError, network_overrides, read_options
    from sdnet_plugin.inference import load_weights
    demo_network = read_options(demo.TRAIN_OPTIONS)['network_g']
    stored = {'type': 'SDNet', 'preset': 'light', 'preset_version': 1, 'num_block': [1, 1, 1, 27, 1]}
    weights = tmp_path / 'old.pth'
    torch.save({
        'params': SDNet(**{
            k: v for k, v in stored.items() if k != 'type'
        }).state_dict(),
        'network_g': stored
    }, weights)
    overrides = network_overrides(str(weights), demo_network)
    assert overrides == ['network_g:preset_version=1', 'network_g:num_block=[1, 1, 1, 27, 1]']
    opt = dict(demo_network)
    for entry in overrides:  # as BasicSR's --force_yml applies them
        key, value = entry.split('=')
        opt[key.split(':')[1]] = _postprocess_yml_value(value)
    build_network(opt).load_state_dict(load_weights(weights)[0])  # strict
    assert network_overrides(str(weights), dict(demo_network, preset_version=1, num_block=[1, 1, 1, 27, 1])) == []
    torch.save({'params': {}, 'network_g': {'type': 'NAFNet'}}, tmp_path / 'other.pth')
    with pytest.raises(StepError, match='hold a NAFNet network; the demo trains SDNet'):
        network_overrides(str(tmp_path / 'other.pth'), demo_network)
