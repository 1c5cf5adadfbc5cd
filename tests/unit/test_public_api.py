"""The package's public surface: what __all__ names exists, the docstring's
example runs, and the pure half imports without pyspark."""

from __future__ import annotations

import doctest
import subprocess
import sys

import dp_spark


def test_every_public_name_resolves():
    for name in dp_spark.__all__:
        assert getattr(dp_spark, name) is not None, name


def test_the_package_docstring_example_runs():
    assert doctest.testmod(dp_spark).failed == 0


def test_the_pure_half_imports_without_pyspark():
    code = "import sys, dp_spark; dp_spark.build_mechanism; print('pyspark' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
