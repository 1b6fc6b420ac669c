"""Pack the newest training state of an experiment into one small file, or unpack it to resume from it.

The same as ``python -m sdnet_plugin.tools.pack_training_state``, whose module documents the arguments.
"""
from sdnet_plugin.tools.pack_training_state import main

__all__ = ['main']

if __name__ == '__main__':
    main()
