"""Synthesise GoPro-style (blurry, sharp, exact flow) triplets from real photographs.

The same as ``python -m sdnet_plugin.tools.synthesize_gopro``, whose module documents the arguments.
"""
from sdnet_plugin.tools.synthesize_gopro import main

__all__ = ['main']

if __name__ == '__main__':
    main()
