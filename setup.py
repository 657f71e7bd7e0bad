"""Builds the one compiled module, server/_codec.pyx (pyproject.toml holds everything else).

When Cython or a C compiler is missing the build still succeeds without it, and server/codec.py
falls back to the pure-Python twin (server/_codec_pure.py).
"""

from setuptools import setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: the pure-Python modules only
    extensions = []
else:
    from setuptools import Extension

    extensions = cythonize([Extension("server._codec", ["server/_codec.pyx"])], quiet=True)
    for extension in extensions:
        # A failed compile (no gcc, no Python headers) is a warning, not a failed install.
        # (Set after cythonize, which does not carry `optional` over.)
        extension.optional = True

setup(ext_modules=extensions)
