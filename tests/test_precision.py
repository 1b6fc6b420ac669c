"""Precision names, their resolution per device, and the layout rule."""
import pytest
import torch

from sdnet_plugin import precision


def test_auto_follows_the_cpu_and_explicit_names_map_to_dtypes():
    native = precision.cpu_has_native_bf16()
    assert precision.resolve('auto', 'cpu') == (torch.bfloat16 if native else None)
    assert precision.resolve(None, 'cpu') == precision.resolve('auto', 'cpu')
    assert precision.resolve('bf16', 'cpu') == torch.bfloat16
    assert precision.resolve('fp32', 'cpu') is None and precision.resolve('off', 'cpu') is None
    assert precision.resolve(False, 'cpu') is None  # YAML reads a bare `off` as false
    assert precision.resolve('fp16', 'cuda') == torch.float16


def test_cpu_flag_probe_agrees_with_proc_cpuinfo():
    with open('/proc/cpuinfo') as f:
        flags = next(line for line in f if line.startswith('flags')).split()
    if 'amx_bf16' in flags or 'avx512_bf16' in flags:
        assert precision.cpu_has_native_bf16()


@pytest.mark.parametrize('name, message', [('fp16', 'not supported on the CPU'), ('half', 'unknown precision')])
def test_bad_names_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        precision.resolve(name, 'cpu')


def test_channels_last_rule():
    assert precision.use_channels_last('auto', 'cpu', None)
    assert precision.use_channels_last(None, 'cuda', torch.float16)
    assert not precision.use_channels_last('auto', 'cuda', None)
    assert precision.use_channels_last(False, 'cpu', torch.bfloat16) is False
    with pytest.raises(ValueError, match='channels_last'):
        precision.use_channels_last('sometimes', 'cpu', None)


def test_autocast_context():
    with precision.autocast('cpu', torch.bfloat16):
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    with precision.autocast('cpu', None):
        assert not torch.is_autocast_enabled('cpu')
