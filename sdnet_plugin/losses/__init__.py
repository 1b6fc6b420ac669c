from sdnet_plugin.utils import import_modules_with_suffix

# Importing each *_loss.py registers its classes in BasicSR's registries.
_modules = import_modules_with_suffix(__name__, __file__, '_loss')

from .flow_offset_loss import FlowGuidedOffsetLoss, downsample_flow, flow_to_offsets  # noqa: E402
from .psnr_loss import PSNRLoss  # noqa: E402

__all__ = ['FlowGuidedOffsetLoss', 'PSNRLoss', 'downsample_flow', 'flow_to_offsets']
