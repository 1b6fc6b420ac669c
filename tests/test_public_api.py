"""Every name README's "Python API" table documents is importable where it says, and is the module's ``__all__``."""
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / 'README.md'


def documented_names():
    """``{module: [names]}`` from the table of README's "Python API" section."""
    text = README.read_text(encoding='utf-8')
    section = text.split('\n## Python API\n', 1)[1].split('\n## ', 1)[0]
    table = {}
    for line in section.splitlines():
        match = re.match(r'\| `(sdnet_plugin[\w.]*)` \| (.+) \|$', line)
        if match:
            table[match.group(1)] = re.findall(r'`(\w+)`', match.group(2))
    return table


def test_the_table_covers_the_documented_entry_points():
    table = documented_names()
    assert {
        'sdnet_plugin', 'sdnet_plugin.archs', 'sdnet_plugin.ops', 'sdnet_plugin.losses', 'sdnet_plugin.data',
        'sdnet_plugin.models', 'sdnet_plugin.inference', 'sdnet_plugin.export'
    } <= set(table)
    assert 'flow_to_offsets' in table['sdnet_plugin.losses'] and 'FlowGuidedOffsetLoss' in table['sdnet_plugin.losses']
    assert {'modulated_deform_conv2d', 'ModulatedDeformConv2d'} <= set(table['sdnet_plugin.ops'])


@pytest.mark.parametrize('module_name, names', sorted(documented_names().items()))
def test_documented_names_import_and_match_all(module_name, names):
    module = importlib.import_module(module_name)
    for name in names:
        assert getattr(module, name) is not None, f'{module_name}.{name}'
    assert sorted(module.__all__) == sorted(names), module_name
    namespace = {}
    exec(f'from {module_name} import *', namespace)  # noqa: S102
    assert set(names) - {'__version__'} <= set(namespace)


def test_readme_examples():
    import sdnet_plugin
    from sdnet_plugin.losses import flow_to_offsets  # noqa: F401
    from sdnet_plugin.ops import ModulatedDeformConv2d, modulated_deform_conv2d  # noqa: F401
    assert sdnet_plugin.SDNet is sdnet_plugin.archs.sdnet_arch.SDNet
    assert sdnet_plugin.SDNetModel is sdnet_plugin.models.sdnet_model.SDNetModel


def _resolve(dotted):
    """The object ``dotted`` names (``package.module.attribute...``), importing modules as needed."""
    parts = dotted.split('.')
    obj = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], 2):
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module('.'.join(parts[:index]))
    return obj


def test_every_name_the_docs_use_exists_where_they_say():
    """``from sdnet_plugin... import ...`` lines and ``sdnet_plugin.x.y`` references of README.md and docs/*.md."""
    checked = set()
    for path in [README] + sorted(README.parent.glob('docs/*.md')):
        text = path.read_text(encoding='utf-8')
        for module_name, names in re.findall(r'from (sdnet_plugin[\w.]*) import ([\w, ]+)', text):
            checked.update(f'{module_name}.{name.strip()}' for name in names.split(','))
        checked.update(re.findall(r'\b(sdnet_plugin(?:\.\w+)+)', text))
    assert {'sdnet_plugin.losses.flow_to_offsets', 'sdnet_plugin.inference.SDNetRestorer'} <= checked
    for dotted in sorted(checked):
        assert _resolve(dotted) is not None, dotted
