"""Test with BasicSR's pipeline and the plugin's registries: ``python sdnet_plugin/test.py -opt OPTIONS.yml``
(or ``python -m sdnet_plugin.test``).

Results (logs, metrics, images when ``val.save_img`` is true) go to ``results/<name>/`` in the repository root;
relative paths inside the option file are taken from the repository root, whatever the working directory (see
:func:`sdnet_plugin.train.root_path`).
"""
__all__ = ['main']


def main():
    from sdnet_plugin.train import run_pipeline
    run_pipeline('test')


if __name__ == '__main__':
    main()
