from sdnet_plugin.utils import import_modules_with_suffix

# Importing each *_model.py registers its classes in BasicSR's registries.
_modules = import_modules_with_suffix(__name__, __file__, '_model')

from .sdnet_model import SDNetModel  # noqa: E402

__all__ = ['SDNetModel']
