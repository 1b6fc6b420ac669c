"""Turn a GoPro-layout split (real or synthetic) into BasicSR LMDB databases of blurry, sharp and flow images.

The same as ``python -m sdnet_plugin.tools.create_lmdb``, whose module documents the arguments.
"""
from sdnet_plugin.tools.create_lmdb import main

__all__ = ['main']

if __name__ == '__main__':
    main()
