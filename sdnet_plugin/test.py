"""Test with BasicSR's pipeline and the plugin's registries: ``python sdnet_plugin/test.py -opt OPTIONS.yml``.

Results (logs, metrics, images when ``val.save_img`` is true) go to ``results/<name>/`` in the repository root;
relative paths inside the option file are taken from the repository root, whatever the working directory.
"""
import sys
from os import path as osp

if __name__ == '__main__' and sys.path and osp.abspath(sys.path[0] or '.') == osp.dirname(osp.abspath(__file__)):
    # run as a script: import the package from the repository, not this folder's modules as top-level ones
    sys.path[0] = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))


def main():
    from sdnet_plugin.train import run_pipeline
    run_pipeline('test')


if __name__ == '__main__':
    main()
