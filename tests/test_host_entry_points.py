"""BasicSR's own entry points with the plugin installed: the import hook ``sdnet_plugin_hook.pth``.

Each test runs a fresh interpreter of a throw-away virtual environment whose ``site-packages`` holds only the hook's
``.pth`` and a ``.pth`` listing this repository and the current interpreter's packages, so the hook is loaded by
``site`` at interpreter start exactly as after ``pip install``, and ``python -m basicsr.train`` is the real thing.
"""
import importlib.util
import os
import site
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from test_train_pipeline import NETWORK, demo_options, lmdb_set, read_log, write_options

REPO = Path(__file__).resolve().parent.parent
BASICSR_DIR = Path(importlib.util.find_spec('basicsr').origin).parent


@pytest.fixture(scope='module')
def hooked_python(tmp_path_factory):
    """``python`` of a virtual environment where the plugin is 'installed' (hook ``.pth`` + search paths)."""
    env_dir = tmp_path_factory.mktemp('hooked_venv')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)], check=True)
    site_dir = Path(next(env_dir.glob('lib/python*/site-packages')))
    paths = [str(REPO)] + [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    (site_dir / '00-search-paths.pth').write_text('\n'.join(paths) + '\n')
    (site_dir / 'sdnet_plugin_hook.pth').write_text((REPO / 'sdnet_plugin_hook.pth').read_text())
    return str(env_dir / 'bin' / 'python')


def run(command, cwd, hook=True, check=True):
    env = dict(os.environ, SDNET_DCN_BACKEND='torch', OMP_NUM_THREADS='1', SDNET_PLUGIN_HOOK='1' if hook else '0')
    env.pop('PYTHONPATH', None)
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f'{command} failed ({result.returncode}):\n{result.stderr[-3000:]}')
    return result


def test_interpreter_start_loads_neither_torch_nor_basicsr(hooked_python, tmp_path):
    probe = ('import sys; print(sorted(m for m in ("torch", "torchvision", "basicsr", "sdnet_plugin", "numpy") '
             'if m in sys.modules)); print(any(type(f).__name__ == "BasicsrFinder" for f in sys.meta_path))')
    assert run([hooked_python, '-c', probe], tmp_path).stdout.split() == ['[]', 'True']
    assert run([hooked_python, '-c', probe], tmp_path, hook=False).stdout.split() == ['[]', 'False']
    # importing basicsr is what brings the plugin in, fixes first
    probe = ('import basicsr, sys; from basicsr.utils.registry import ARCH_REGISTRY; '
             'print(ARCH_REGISTRY.get("SDNet").__module__, "sdnet_plugin" in sys.modules)')
    assert run([hooked_python, '-c', probe], tmp_path).stdout.split() == ['sdnet_plugin.archs.sdnet_arch', 'True']


def test_python_m_basicsr_train_then_test(hooked_python, synthetic_gopro, tmp_path):
    name = f'hooked_{uuid.uuid4().hex[:8]}'
    run([
        hooked_python, '-m', 'basicsr.train', '-opt',
        write_options(demo_options(name, lmdb_set(synthetic_gopro), total_iter=2), tmp_path)
    ], tmp_path)
    # an installed basicsr writes under the working directory, not inside site-packages
    exp = tmp_path / 'experiments' / name
    log = read_log(exp)
    assert 'iter:       2' in log and 'l_pix:' in log and 'l_offset:' in log
    checkpoint = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    assert checkpoint['network_g'] == dict(NETWORK, preset_version=1)
    assert not (BASICSR_DIR.parent / 'experiments' / name).exists()

    test_opt = {
        'name': name,
        'model_type': 'SDNetModel',
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'test': dict(lmdb_set(synthetic_gopro, use_flow=False), name='tiny-test', type='BlurSharpFlowDataset')
        },
        'network_g': dict(NETWORK),
        'path': {
            'pretrain_network_g': f'experiments/{name}/models/net_g_latest.pth',
            'param_key_g': 'params_ema'
        },
        'val': {
            'save_img': False,
            'metrics': {
                'psnr': {
                    'type': 'calculate_psnr',
                    'crop_border': 0
                }
            }
        },
    }
    (tmp_path / 'test').mkdir()
    run([hooked_python, '-m', 'basicsr.test', '-opt', write_options(test_opt, tmp_path / 'test')], tmp_path)
    assert '# psnr:' in read_log(tmp_path / 'results' / name, 'test')


def test_basicsr_train_script_by_path_trains_and_resumes_on_cpu(hooked_python, synthetic_gopro, tmp_path):
    name = f'hooked_{uuid.uuid4().hex[:8]}'
    option_file = write_options(demo_options(name, lmdb_set(synthetic_gopro), total_iter=2), tmp_path)
    run([hooked_python, BASICSR_DIR / 'train.py', '-opt', option_file], tmp_path)
    run([
        hooked_python, BASICSR_DIR / 'train.py', '-opt', option_file, '--auto_resume', '--force_yml',
        'train:total_iter=3'
    ], tmp_path)
    log = read_log(tmp_path / 'experiments' / name)
    assert 'Resuming training from epoch: 0, iter: 2.' in log and 'iter:       3' in log


def test_switched_off_the_host_does_not_know_sdnet(hooked_python, synthetic_gopro, tmp_path):
    opt = demo_options('hook_off', lmdb_set(synthetic_gopro))
    sequence = Path(synthetic_gopro['root']) / synthetic_gopro['keys'][0].split('/')[0]
    opt['model_type'] = 'SRModel'  # stock dataset and model: the network is the first name the host looks up
    opt['datasets']['train'] = {
        'name': 'paired',
        'type': 'PairedImageDataset',
        'io_backend': {
            'type': 'disk'
        },
        'dataroot_gt': str(sequence / 'sharp'),
        'dataroot_lq': str(sequence / 'blur'),
        'gt_size': 32,
        'num_worker_per_gpu': 0,
        'batch_size_per_gpu': 1
    }
    option_file = write_options(opt, tmp_path)
    # only the functional_tensor fix (without it basicsr does not import at all), no plugin
    launch = ('import runpy, sys, sdnet_plugin_hook; sdnet_plugin_hook._load_compat().prepare(); '
              'sys.argv = ["train.py"] + sys.argv[1:]; runpy.run_module("basicsr.train", run_name="__main__")')
    result = run([hooked_python, '-c', launch, '-opt', option_file], tmp_path, hook=False, check=False)
    assert result.returncode != 0
    assert "No object named 'SDNet' found in 'arch' registry!" in result.stderr
    assert not (tmp_path / 'experiments' / 'hook_off' / 'models').exists()


def test_wheel_installs_the_hook_and_the_weights(tmp_path):
    """A regular install's files: the hook at the top of site-packages, every weights file of ``weights/`` (a new
    one too, under any name) inside the package, where the lookup finds it; no training states."""
    import shutil
    import zipfile
    pytest.importorskip('setuptools')
    source = tmp_path / 'source'  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(REPO / 'sdnet_plugin', source / 'sdnet_plugin', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.py', 'README.md', 'MANIFEST.in', 'sdnet_plugin_hook.py', 'sdnet_plugin_hook.pth'):
        shutil.copy(REPO / name, source / name)
    (source / 'weights' / 'resume').mkdir(parents=True)
    (source / 'weights' / 'resume' / 'net_g_7000.pth').write_bytes(b'training state')
    shipped = [path.name for path in REPO.glob('weights/*.pth')] + ['sdnet_light_camera.pth']
    for name in shipped:
        (source / 'weights' / name).write_bytes(name.encode())
    command = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', tmp_path, source]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f'cannot build a wheel here: {result.stderr.strip().splitlines()[-1:]}')
    wheel = zipfile.ZipFile(next(tmp_path.glob('*.whl')))
    names = set(wheel.namelist())
    assert {'sdnet_plugin_hook.pth', 'sdnet_plugin_hook.py', 'sdnet_plugin/export.py'} <= names
    assert {f'sdnet_plugin/weights/{name}' for name in shipped} == {n for n in names if '/weights/' in n}
    from sdnet_plugin.inference import DEFAULT_WEIGHTS_NAME, weights_candidates
    assert DEFAULT_WEIGHTS_NAME in shipped
    package_copy = weights_candidates('sdnet_light_camera.pth')[0]
    assert package_copy.relative_to(REPO).as_posix() in names  # where a regular install puts it
    entry_points = wheel.read('sdnet_plugin-0.1.0.dist-info/entry_points.txt')
    assert b'sdnet-export = sdnet_plugin.export:main' in entry_points and b'sdnet-deblur' in entry_points
    # pip uninstall removes what RECORD lists; an editable install (PEP 660 wheel) carries the hook as well
    build = ('import sys, setuptools.build_meta as backend; sys.stdout = sys.stderr; '
             'print(backend.build_editable(sys.argv[1]), file=sys.__stdout__)')
    editable = subprocess.run([sys.executable, '-c', build, str(tmp_path / 'editable')], cwd=source,
                              capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    editable = zipfile.ZipFile(tmp_path / 'editable' / editable)
    assert not any(name.startswith('sdnet_plugin/') for name in editable.namelist())  # the package stays in source
    for archive in (wheel, editable):
        record = archive.read('sdnet_plugin-0.1.0.dist-info/RECORD').decode().splitlines()
        assert 'sdnet_plugin_hook.pth' in {line.split(',')[0] for line in record}
        assert archive.read('sdnet_plugin_hook.pth') == (REPO / 'sdnet_plugin_hook.pth').read_bytes()
