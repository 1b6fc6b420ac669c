import glob
import os
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HOOK = 'sdnet_plugin_hook.pth'
# Every weights file at the top of weights/ (not the training states in weights/resume/); sdnet_plugin.inference looks
# them up by name inside the package first, then in the checkout.
WEIGHTS = sorted(glob.glob(os.path.join('weights', '*.pth')))


class BuildPy(build_py):
    """Also installs the import hook ``sdnet_plugin_hook.pth`` at the top of ``site-packages`` (editable installs
    too) and, in a regular install, a copy of the shipped weights files in ``sdnet_plugin/weights/``."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            # an editable wheel takes its top-level files from the install folder; the package itself stays here
            self.copy_file(HOOK, os.path.join(self.get_finalized_command('install').install_lib, HOOK))
            return
        self.copy_file(HOOK, os.path.join(self.build_lib, HOOK))
        for path in WEIGHTS:
            self.mkpath(os.path.join(self.build_lib, 'sdnet_plugin', 'weights'))
            self.copy_file(path, os.path.join(self.build_lib, 'sdnet_plugin', path))


setup(
    name='sdnet-plugin',
    version='0.1.0',
    description='SDNet dynamic-scene deblurring (CVPR 2020) as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sdnet_plugin', 'sdnet_plugin.*']),
    # The fused CPU deformable convolution is compiled from this source on first use (or by `make install`).
    package_data={'sdnet_plugin.ops': ['csrc/*.cpp']},
    py_modules=['sdnet_plugin_hook'],
    python_requires='>=3.9',
    # torch, torchvision and basicsr are installed first (basicsr without build isolation), see the Makefile.
    install_requires=[
        'av', 'basicsr==1.4.2', 'lmdb', 'matplotlib', 'numpy', 'opencv-python', 'psutil', 'pyyaml', 'scikit-image',
        'tqdm'
    ],
    extras_require={
        'test': ['pytest>=7', 'flake8==7.5.0', 'isort==9.0.2', 'yapf==0.43.0'],  # make test runs make lint first
        'mmcv': ['mmengine==0.10.7', 'ninja'],
        'onnx': ['onnx>=1.16', 'onnxruntime>=1.17'],
    },
    entry_points={
        'console_scripts': ['sdnet-deblur=sdnet_plugin.deblur:main', 'sdnet-export=sdnet_plugin.export:main']
    },
    cmdclass={'build_py': BuildPy},
)
