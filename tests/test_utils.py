"""Shared small helpers: size parsing, device choice, preset names."""
import argparse

import pytest
import torch

from sdnet_plugin.archs.sdnet_arch import SDNET_PRESET_VERSIONS, SDNET_PRESETS
from sdnet_plugin.utils import parse_size, pick_device, preset_names


@pytest.mark.parametrize('text, size', [('1280x720', (1280, 720)), ('256X256', (256, 256)), ('1x2', (1, 2)),
                                        (' 40x32 ', (40, 32))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize('text, message', [
    ('1280by720', "size must be WIDTHxHEIGHT, e.g. 1280x720, got '1280by720'"),
    ('12x', "size must be WIDTHxHEIGHT"),
    ('1x2x3', 'size must be WIDTHxHEIGHT'),
    ('axb', 'size must be WIDTHxHEIGHT'),
    ('0x10', "size must be positive, got '0x10'"),
    ('10x-1', 'size must be positive'),
])
def test_parse_size_errors_are_argparse_messages(text, message, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_size(text)
    parser = argparse.ArgumentParser(prog='tool')
    parser.add_argument('--size', type=parse_size)
    with pytest.raises(SystemExit):
        parser.parse_args(['--size', text])
    assert f'tool: error: argument --size: {message}' in capsys.readouterr().err


def test_pick_device():
    assert pick_device('cpu') == torch.device('cpu') and pick_device(torch.device('cpu')).type == 'cpu'
    assert pick_device().type == ('cuda' if torch.cuda.is_available() else 'cpu') == pick_device('auto').type
    for name in ('foo', 'mps', 'cuda:x', ''):
        with pytest.raises(ValueError, match=rf"^device {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'$"):
            pick_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='^device cuda requested but CUDA is not available$'):
            pick_device('cuda:0')
    else:
        count = torch.cuda.device_count()
        assert pick_device('cuda').type == 'cuda'
        with pytest.raises(ValueError, match=f'there are {count} CUDA devices'):
            pick_device(f'cuda:{count}')


def test_preset_names_are_the_architecture_table():
    names = preset_names()
    assert names == tuple(SDNET_PRESET_VERSIONS) == tuple(SDNET_PRESETS)
    assert {'tiny', 'small', 'base'} <= set(names) and len(set(names)) == len(names)
    parser = argparse.ArgumentParser()
    parser.add_argument('--preset', default='base', choices=preset_names())
    assert parser.parse_args(['--preset', names[-1]]).preset == names[-1]
