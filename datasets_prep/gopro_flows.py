"""Bi-directional exposure flows for the real GoPro dataset (Nah et al. 2017), written next to ``blur/`` and ``sharp/``.

The same as ``python -m sdnet_plugin.tools.gopro_flows``, whose module documents the arguments.
"""
from sdnet_plugin.tools.gopro_flows import main

__all__ = ['main']

if __name__ == '__main__':
    main()
