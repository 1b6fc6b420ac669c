"""sdnet-plugin: SDNet (Yuan, Su and Ma, CVPR 2020) for the BasicSR toolbox.

Importing this package applies the compatibility fixes for pip ``basicsr`` 1.4.2 (see :mod:`sdnet_plugin.compat`)
and registers the plugin's architectures, losses, datasets and models in BasicSR's registries. The public names are
listed in ``__all__`` here and in each sub-package (README, "Python API").
"""
from . import compat

compat.apply()

from . import archs, data, losses, models, ops  # noqa: E402,F401  (registers the plugin with BasicSR)
from .archs import SDNet  # noqa: E402
from .data import BlurSharpFlowDataset  # noqa: E402
from .inference import SDNetRestorer, load_network, tiled_forward  # noqa: E402
from .losses import FlowGuidedOffsetLoss, flow_to_offsets  # noqa: E402
from .models import SDNetModel  # noqa: E402
from .ops import ModulatedDeformConv2d, modulated_deform_conv2d  # noqa: E402

__version__ = '0.1.0'
__all__ = [
    'BlurSharpFlowDataset', 'FlowGuidedOffsetLoss', 'ModulatedDeformConv2d', 'SDNet', 'SDNetModel', 'SDNetRestorer',
    'flow_to_offsets', 'load_network', 'modulated_deform_conv2d', 'tiled_forward', '__version__'
]
