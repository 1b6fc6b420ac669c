import pytest
import torch

from sdnet_plugin.archs.sdnet_arch import SDNet
from sdnet_plugin.ops import ModulatedDeformConv2d


@pytest.fixture(scope='module')
def speed(load_benchmark):
    return load_benchmark('speed')


def macs_by_hooks(preset, width, height):
    """Independent count: every conv's output elements times its input channels times its kernel area."""
    net = SDNet(preset, dcn_backend='torch').eval()
    total = []

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        weight = module.weight
        total.append(out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3])

    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, ModulatedDeformConv2d)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.rand(1, 3, height, width))
    return sum(total)


@pytest.mark.parametrize('preset', ['tiny', 'base', 'light_s'])
def test_macs_count_every_convolution_and_deformable_convolution(speed, preset):
    assert speed.count_macs(preset, 40, 24) == macs_by_hooks(preset, 40, 24)
    assert speed.count_macs(lambda: SDNet(preset, num_out_ch=1), 40, 24) < speed.count_macs(preset, 40, 24)


def test_dcn_counting_patch_is_undone(speed):
    from sdnet_plugin.ops import modulated_deform_conv as dcn_ops
    original = dcn_ops.modulated_deform_conv2d
    with speed.deform_conv_as_plain_conv():
        assert dcn_ops.modulated_deform_conv2d is not original
    assert dcn_ops.modulated_deform_conv2d is original


@pytest.fixture
def small_fast_path(speed, monkeypatch):
    """Fast-path tables on tiny shapes (the real ones take minutes)."""
    monkeypatch.setattr(speed, 'LAYER_CASES', (('inference', (1, 8, 12, 16), False), ('training', (2, 8, 8, 8), True)))
    monkeypatch.setattr(speed, 'TRAINING_BATCH', (2, 16))


def test_fast_path_tables_compare_old_and_new_in_one_run(speed, small_fast_path, capsys):
    assert speed.main([
        '--size', '24x16', '--presets', 'tiny', '--repeats', '1', '--warmup', '0', '--devices', 'cpu', '--skip-backends'
    ]) == 0
    out = capsys.readouterr().out
    old, new = speed.OLD_PATH[0], speed.fast_path()[0]
    for mode in ('inference', 'training'):
        rows = [line for line in out.splitlines() if line.startswith(f'| {mode} |')]
        assert [row.split(' | ')[1] for row in rows] == [old, new, 'each at its best']
        conv, dcn = ([float(row.split(' | ')[column]) for row in rows] for column in (2, 3))
        assert conv[2] == min(conv[:2]) and dcn[2] == min(dcn[:2])  # the best of each side, same run
    preset_row = [line for line in out.splitlines() if line.startswith('| tiny | ') and 'x**' in line]
    assert len(preset_row) == 1 and preset_row[0].count('**') == 4
    assert '2 x 16x16 patches' in out


def test_tables_are_printed(speed, small_fast_path, capsys):
    assert speed.main([
        '--size', '24x16', '--presets', 'tiny', '--backends', 'torch', '--repeats', '1', '--warmup', '0', '--devices',
        'cpu'
    ]) == 0
    out = capsys.readouterr().out
    assert '| tiny | 426,089 (0.43 M) |' in out
    row = [line for line in out.splitlines() if line.startswith('| tiny | torch | CPU')]
    assert len(row) == 1 and 'failed' not in row[0]


def test_bad_options_are_refused(speed, capsys):
    for argv in (['--size', '1280by720'], ['--size', '0x10'], ['--repeats',
                                                               '0'], ['--presets',
                                                                      'huge'], ['--clock', 'cpu', '--devices', 'cuda']):
        with pytest.raises(SystemExit):
            speed.parse_args(argv)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            speed.parse_args(['--devices', 'cuda'])


def test_cpu_clock_counts_process_time(speed, small_fast_path, capsys):
    assert speed.main([
        '--size', '16x16', '--presets', 'tiny', '--backends', 'torch', '--repeats', '1', '--warmup', '0', '--threads',
        '1', '--clock', 'cpu'
    ]) == 0
    assert 'CPU time of inference at 16x16' in capsys.readouterr().out
