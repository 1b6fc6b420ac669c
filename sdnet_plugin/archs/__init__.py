from sdnet_plugin.utils import import_modules_with_suffix

# Importing each *_arch.py registers its classes in BasicSR's registries.
_modules = import_modules_with_suffix(__name__, __file__, '_arch')

from .sdnet_arch import SDNET_PRESETS, SDNet, SVDModule  # noqa: E402

__all__ = ['SDNET_PRESETS', 'SDNet', 'SVDModule']
