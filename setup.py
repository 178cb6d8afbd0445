"""ssn-norm's build: the pure-Python package plus optional C++ kernels.

``ssn_norm._ext`` (``ssn_norm/csrc``) is built against the installed torch
when torch and a C++ compiler are present (``pip install --no-build-isolation
-e .``, as ``tools/install.sh`` does).  It is optional: without it every layer
works, and the C++ kernel provider (:mod:`ssn_norm.ops.providers`) reports
why it is missing.  ``SSN_NORM_BUILD_EXT=0`` installs without compiling it
(``tools/install.sh`` then supplies a cached build of the same sources).
"""
import os
from setuptools import setup


def native_extension() -> dict:
    # tools/install.sh sets SSN_NORM_BUILD_EXT=0 when it reuses a build of
    # the same sources, torch and compiler (ssn_norm/_ext*.so in place).
    if os.environ.get('SSN_NORM_BUILD_EXT', '1') == '0':
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # build isolation or no torch: pure Python
        return {}
    ext = CppExtension(
        'ssn_norm._ext', [
            'ssn_norm/csrc/bindings.cpp',
            'ssn_norm/csrc/layer_norm_released.cpp', 'ssn_norm/csrc/rows.cpp'
        ],
        extra_compile_args=['-O3', '-fopenmp'],
        extra_link_args=['-fopenmp'],
        optional=True)
    return dict(
        ext_modules=[ext],
        cmdclass={'build_ext': BuildExtension.with_options(use_ninja=False)})


setup(**native_extension())
