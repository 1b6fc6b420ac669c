import importlib

import pytest


@pytest.fixture(scope='session')
def load_benchmark():
    """``load_benchmark(name)``: the module of ``benchmarks/<name>.py``, a script folder on pytest's ``pythonpath``
    (``setup.cfg``), imported by name as the scripts import each other."""
    return importlib.import_module
