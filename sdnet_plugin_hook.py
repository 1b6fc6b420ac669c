"""Loads sdnet-plugin into BasicSR's own entry points: ``python -m basicsr.train``, ``python basicsr/train.py``, any
script that builds networks, losses, datasets and models through BasicSR's registries.

``sdnet_plugin_hook.pth``, installed next to this module by ``pip install`` (editable or not) and removed by
``pip uninstall``, imports this module at interpreter start. It only puts a finder on ``sys.meta_path`` (no other
import); when ``basicsr`` is first imported, the finder applies the fixes that ``import basicsr`` needs
(:func:`sdnet_plugin.compat.prepare`), lets basicsr import, then imports ``sdnet_plugin``, which registers
``SDNet``, ``FlowGuidedOffsetLoss``, ``BlurSharpFlowDataset`` and ``SDNetModel`` and applies the other fixes.
``SDNET_PLUGIN_HOOK=0`` in the environment turns it off.
"""
import os
import sys

ENV_SWITCH = 'SDNET_PLUGIN_HOOK'


def enabled():
    """False when the environment variable ``SDNET_PLUGIN_HOOK`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(ENV_SWITCH, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def _load_compat():
    """``sdnet_plugin.compat`` without importing ``sdnet_plugin`` (whose import needs basicsr)."""
    if 'sdnet_plugin.compat' in sys.modules:
        return sys.modules['sdnet_plugin.compat']
    import importlib.util
    package = importlib.util.find_spec('sdnet_plugin')  # locates the package without running it
    if package is None or not package.submodule_search_locations:
        return None
    path = os.path.join(list(package.submodule_search_locations)[0], 'compat.py')
    spec = importlib.util.spec_from_file_location('sdnet_plugin.compat', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # ``from . import compat`` in sdnet_plugin finds this very module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


class _BasicsrLoader:
    """Wraps basicsr's loader: compatibility fixes, then basicsr, then the plugin."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        compat = _load_compat()
        if compat is not None:
            compat.prepare()
        self.loader.exec_module(module)
        if compat is None:
            return
        try:
            import sdnet_plugin  # noqa: F401
        except Exception as error:  # a broken plugin must not take BasicSR down with it
            import warnings
            warnings.warn(
                f'sdnet-plugin is not loaded into basicsr ({type(error).__name__}: {error}); '
                f'{ENV_SWITCH}=0 turns this hook off', RuntimeWarning, stacklevel=2)


class BasicsrFinder:
    """Meta path finder that answers only for ``basicsr`` (once): the usual spec, with :class:`_BasicsrLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != 'basicsr' or not enabled():
            return None
        uninstall()  # basicsr is imported once per process
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _BasicsrLoader(spec.loader)
        return spec


def installed():
    return any(isinstance(finder, BasicsrFinder) for finder in sys.meta_path)


def install():
    """Put the finder first on ``sys.meta_path`` (idempotent; nothing when basicsr is already imported)."""
    if enabled() and 'basicsr' not in sys.modules and not installed():
        sys.meta_path.insert(0, BasicsrFinder())


def uninstall():
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, BasicsrFinder)]


install()
