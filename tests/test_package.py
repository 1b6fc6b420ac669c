"""Importing sdnet_plugin registers every plugin name in BasicSR and applies the basicsr 1.4.2 fixes."""
import sys

import pytest
import torch

import sdnet_plugin
from sdnet_plugin import compat


def test_registry_names_resolve():
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
    assert ARCH_REGISTRY.get('SDNet').__module__ == 'sdnet_plugin.archs.sdnet_arch'
    assert LOSS_REGISTRY.get('FlowGuidedOffsetLoss').__module__ == 'sdnet_plugin.losses.flow_offset_loss'
    assert DATASET_REGISTRY.get('BlurSharpFlowDataset').__module__.startswith('sdnet_plugin.data.')
    assert MODEL_REGISTRY.get('SDNetModel').__module__.startswith('sdnet_plugin.models.')


def test_option_dicts_build_through_basicsr():
    from basicsr.archs import build_network
    from basicsr.losses import build_loss
    net = build_network({'type': 'SDNet', 'preset': 'tiny', 'dcn_backend': 'torch'})
    assert isinstance(net, sdnet_plugin.archs.sdnet_arch.SDNet) and len(net.svd) == 2
    loss = build_loss({'type': 'FlowGuidedOffsetLoss', 'loss_weight': 0.5, 'criterion': 'charbonnier'})
    assert loss.loss_weight == 0.5 and loss.criterion == 'charbonnier'


def test_functional_tensor_alias_lets_basicsr_degradations_import():
    import basicsr.data.degradations as degradations
    alias = sys.modules['torchvision.transforms.functional_tensor']
    assert alias.rgb_to_grayscale is degradations.rgb_to_grayscale
    gray = alias.rgb_to_grayscale(torch.rand(3, 4, 4))
    assert gray.shape == (1, 4, 4)


def test_basicsr_entry_points_are_patched():
    import basicsr.train
    import basicsr.utils.dist_util
    from basicsr.models.base_model import BaseModel
    assert basicsr.train.load_resume_state is compat.load_resume_state
    assert basicsr.utils.dist_util._init_dist_pytorch is compat._init_dist_pytorch
    compat.apply()  # idempotent
    assert basicsr.train.load_resume_state is compat.load_resume_state
    # the model-level fixes stay on the plugin's model: BasicSR's own models keep their methods
    assert BaseModel.get_optimizer is not compat.get_optimizer
    assert BaseModel.model_to_device is not compat.model_to_device


def test_any_torch_optimizer_is_accepted():
    from sdnet_plugin.models import SDNetModel
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = SDNetModel.get_optimizer(None, 'AdamW', params, 1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults['weight_decay'] == 0.01
    assert isinstance(SDNetModel.get_optimizer(None, 'Adam', params, 1e-3), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer type 'Lion'"):
        SDNetModel.get_optimizer(None, 'Lion', params, 1e-3)


def test_resume_state_loads_on_cpu(tmp_path):
    state_dir = tmp_path / 'training_states'
    state_dir.mkdir()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), [10])
    torch.save({
        'iter': 40,
        'epoch': 1,
        'schedulers': [scheduler.state_dict()],
        'optimizers': []
    }, state_dir / '40.state')
    opt = {
        'auto_resume': False,
        'path': {
            'resume_state': str(state_dir / '40.state'),
            'models': str(tmp_path / 'models')
        },
        'network_g': {
            'type': 'SDNet'
        }
    }
    with pytest.raises(ValueError, match=f'40.state: its checkpoint {tmp_path}/models/net_g_40.pth is missing'):
        compat.load_resume_state(opt)
    (tmp_path / 'models').mkdir()
    torch.save({'params': {}}, tmp_path / 'models' / 'net_g_40.pth')
    state = compat.load_resume_state(opt)
    assert state['iter'] == 40 and state['schedulers'][0]['milestones'] == {10: 1}
    assert opt['path']['pretrain_network_g'].endswith('net_g_40.pth')  # basicsr's check_resume ran
    assert compat.load_resume_state({'auto_resume': False, 'path': {'resume_state': None}}) is None


def test_distributed_init_falls_back_to_gloo_without_cuda(monkeypatch):
    calls = {}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda backend, **kw: calls.update(backend=backend))
    compat._init_dist_pytorch('nccl')
    assert calls == {'backend': 'gloo'}


def test_entry_point_scripts_get_cpu_resume_and_a_working_directory_root(tmp_path, monkeypatch):
    """Fix 6: BasicSR's train.py run as ``__main__`` is a second copy of the module; parse_options fixes its caller."""
    calls = []

    def parse_options(root_path, is_train=True):
        calls.append(root_path)
        return {'name': 'x'}, None

    wrapped = compat._wrap_parse_options(parse_options)
    assert compat._wrap_parse_options(wrapped) is wrapped
    script = compile(
        'def load_resume_state(opt):\n    return "cuda only"\n'
        'def train_pipeline(root):\n    opt, _ = parse_options(root)\n    opt["root_path"] = root\n'
        '    return opt, load_resume_state\n', str(tmp_path / 'basicsr' / 'train.py'), 'exec')
    namespace = {'parse_options': wrapped}
    exec(script, namespace)  # noqa: S102
    monkeypatch.chdir(tmp_path)
    opt, resume = namespace['train_pipeline'](str(tmp_path / 'site-packages'))  # an installed basicsr's root
    assert resume is compat.load_resume_state
    assert calls == [str(tmp_path)] and opt['root_path'] == str(tmp_path)
    namespace['train_pipeline'](str(tmp_path / 'BasicSR'))  # a checkout keeps its root
    assert calls[-1] == str(tmp_path / 'BasicSR')
