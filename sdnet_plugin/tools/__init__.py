"""Command-line tools of the plugin, each a module with ``main(argv=None)``: ``python -m sdnet_plugin.tools.<name>``.

* ``collect_photos``: real photographs from package registries into train / val / eval folders;
* ``synthesize_gopro``: GoPro-style (blurry, sharp, exact flow) triplets rendered from photographs;
* ``gopro_flows``: exposure flows for the real GoPro dataset;
* ``create_lmdb``: a GoPro-layout split into BasicSR LMDB databases;
* ``pack_training_state``: an experiment's newest training state into one small file, and back.

``datasets_prep/<name>.py`` and ``scripts/pack_training_state.py`` in a checkout run the same ``main``.
"""
__all__ = []
