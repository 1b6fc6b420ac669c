import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'


@pytest.fixture(scope='session')
def load_benchmark():
    """``load_benchmark(name)`` imports ``benchmarks/<name>.py`` (a script folder, not a package) as a module."""

    def load(name):
        spec = importlib.util.spec_from_file_location(f'{name}_benchmark', BENCHMARKS / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
