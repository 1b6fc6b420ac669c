"""sdnet-plugin: SDNet (Yuan, Su and Ma, CVPR 2020) for the BasicSR toolbox.

Importing this package applies the compatibility fixes for pip ``basicsr`` 1.4.2 (see :mod:`sdnet_plugin.compat`)
and registers the plugin's architectures, losses, datasets and models in BasicSR's registries.
"""
from . import compat

compat.apply()

from . import archs, data, losses, models, ops  # noqa: E402,F401

__version__ = '0.1.0'
