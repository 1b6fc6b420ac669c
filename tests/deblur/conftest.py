"""Fixtures for the inference tests: a random tiny SDNet saved like a training checkpoint."""
import pytest
import torch


def make_tiny_sdnet(seed=0, offset_std=0.05, offset_bias_std=1.0, preset='tiny'):
    """Random ``SDNet(preset)`` whose offset heads are perturbed, so its sampling points really move (by about
    ``offset_bias_std`` level pixels, varying with the content through ``offset_std``), and whose output layer is
    random (it starts at zero), so the output depends on every layer."""
    from sdnet_plugin.archs.sdnet_arch import SDNet
    torch.manual_seed(seed)
    net = SDNet(preset)
    torch.nn.init.normal_(net.conv_last.weight, std=0.05)
    for module in net.svd.values():
        torch.nn.init.normal_(module.dcn.conv_offset[-1].weight, std=offset_std)
        torch.nn.init.normal_(module.dcn.conv_offset[-1].bias, std=offset_bias_std)
    return net.eval()


def save_checkpoint(net, path, network_opt=None, keys=('params', 'params_ema')):
    checkpoint = {key: net.state_dict() for key in keys}
    if network_opt is not None:
        checkpoint['network_g'] = network_opt
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope='session')
def tiny_weights(tmp_path_factory):
    """Path of a checkpoint ``{'params', 'params_ema', 'network_g': {'type': 'SDNet', 'preset': 'tiny'}}``."""
    path = tmp_path_factory.mktemp('weights') / 'net_g_tiny.pth'
    return save_checkpoint(make_tiny_sdnet(), path, {'type': 'SDNet', 'preset': 'tiny'})


@pytest.fixture
def tiny_sdnet():
    """Factory ``tiny_sdnet(seed=0, offset_std=0.05, offset_bias_std=1.0, preset='tiny')``: a random SDNet."""
    return make_tiny_sdnet


@pytest.fixture
def checkpoint_writer():
    """``checkpoint_writer(net, path, network_opt=None, keys=('params', 'params_ema'))`` saves a checkpoint."""
    return save_checkpoint


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on tiny tensors it is faster, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
