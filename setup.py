from setuptools import find_packages, setup

setup(
    name='sdnet-plugin',
    version='0.1.0',
    description='SDNet dynamic-scene deblurring (CVPR 2020) as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sdnet_plugin', 'sdnet_plugin.*']),
    # The fused CPU deformable convolution is compiled from this source on first use (or by `make install`).
    package_data={'sdnet_plugin.ops': ['csrc/*.cpp']},
    python_requires='>=3.9',
    # torch, torchvision and basicsr are installed first (basicsr without build isolation), see the Makefile.
    install_requires=[
        'av', 'basicsr==1.4.2', 'lmdb', 'matplotlib', 'numpy', 'opencv-python', 'psutil', 'pyyaml', 'scikit-image',
        'tqdm'
    ],
    extras_require={'test': ['pytest'], 'mmcv': ['mmengine==0.10.7', 'ninja']},
    entry_points={'console_scripts': ['sdnet-deblur=sdnet_plugin.deblur:main']},
)
