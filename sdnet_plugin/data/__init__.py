from sdnet_plugin.utils import import_modules_with_suffix

# Importing each *_dataset.py registers its classes in BasicSR's registries.
_modules = import_modules_with_suffix(__name__, __file__, '_dataset')

from .blur_sharp_flow_dataset import BlurSharpFlowDataset  # noqa: E402
from .flow_io import read_flow, write_flow  # noqa: E402

__all__ = ['BlurSharpFlowDataset', 'read_flow', 'write_flow']
