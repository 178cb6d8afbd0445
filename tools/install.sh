#!/usr/bin/env bash
# Installs ssn-norm and the frozen OpenMMLab stack into the current Python environment.
#
#   torch 2.13.0 (CPU build where no CUDA build is asked for), mmengine 0.10.7, mmcv 2.1.0 with
#   compiled ops, mmdet 3.3.0, mmsegmentation 1.2.2, mmaction2 1.2.0, their undeclared
#   dependencies, and this package (editable).
#
# mmcv 2.1.0 has no wheel for torch 2.13, so it is built once from the PyPI sdist
# (MMCV_WITH_OPS=1, ~25 min on 2 cores) and the wheel is cached in $SSN_NORM_WHEEL_CACHE
# (default ~/.cache/ssn-norm/wheels).  A prebuilt wheel in ../shared/wheels (beside the
# checkout) or in any directory listed in $SSN_NORM_EXTRA_WHEEL_DIRS is used as a cache too,
# but only after `import mmcv._ext` proves it was built for the installed torch.
#
# Packaging workarounds live here and only here (runtime ones live in ssn_norm/compat.py):
#   * setuptools<81: mmcv's build, mim and mmengine's `mmdet::` config bases need
#     pkg_resources (gone in 82; 81 warns on every import).
#   * torch pinned through a constraints file so no dependency pulls a CUDA build.
#   * ftfy/regex (mmseg) and importlib_metadata (mmaction2) are imported but not declared.
#
# The C++ kernels of ssn_norm/csrc are compiled once per set of sources, torch, Python and
# compiler, and the build is reused from $SSN_NORM_EXT_CACHE (default ~/.cache/ssn-norm/ext).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
cache="${SSN_NORM_WHEEL_CACHE:-$HOME/.cache/ssn-norm/wheels}"
extra_dirs="${SSN_NORM_EXTRA_WHEEL_DIRS:-$here/../shared/wheels}"
mkdir -p "$cache"

pip_install() { "$py" -m pip install --no-input --progress-bar off -c "$here/requirements/constraints.txt" "$@"; }

echo "[install] build tools and torch"
pip_install "setuptools<81" wheel ninja
pip_install torch==2.13.0 numpy

mmcv_ok() { "$py" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '2.1.0'" >/dev/null 2>&1; }

if mmcv_ok; then
    echo "[install] mmcv 2.1.0 with compiled ops already installed"
else
    installed=0
    for dir in "$cache" ${extra_dirs//:/ }; do
        for whl in "$dir"/mmcv-2.1.0-cp3*-linux_*.whl; do
            [ -f "$whl" ] || continue
            echo "[install] trying cached mmcv wheel $whl"
            if pip_install --force-reinstall --no-deps "$whl" && pip_install "$whl" && mmcv_ok; then
                cp -n "$whl" "$cache/" 2>/dev/null || true
                installed=1
                break 2
            fi
            echo "[install] $whl does not work with this torch; ignoring it"
        done
    done
    if [ "$installed" = 0 ]; then
        echo "[install] building mmcv 2.1.0 with ops from the PyPI sdist (about 25 minutes on 2 cores)"
        build="$(mktemp -d)"
        "$py" -m pip download --no-deps --no-binary :all: -d "$build" mmcv==2.1.0
        MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=0 \
            "$py" -m pip wheel --no-build-isolation --no-deps -w "$cache" "$build"/mmcv-2.1.0.tar.gz
        pip_install "$cache"/mmcv-2.1.0-*.whl
        rm -rf "$build"
        mmcv_ok || { echo "[install] mmcv built but 'import mmcv._ext' fails" >&2; exit 1; }
    fi
fi

echo "[install] OpenMMLab toolboxes and their undeclared dependencies"
pip_install -r "$here/requirements/runtime.txt"
echo "[install] ssn-norm (editable) and test requirements"
# The C++ kernels (ssn_norm/_ext) take minutes to compile.  A build is kept in
# $SSN_NORM_EXT_CACHE (default ~/.cache/ssn-norm/ext), keyed by a hash of
# everything it depends on: the sources, setup.py, torch, Python and the
# compiler.  With a match the package installs without compiling
# (SSN_NORM_BUILD_EXT=0, see setup.py) and gets that build, once it imports.
ext_cache="${SSN_NORM_EXT_CACHE:-$HOME/.cache/ssn-norm/ext}"
ext_name="$("$py" -c "import sysconfig; print('_ext' + sysconfig.get_config_var('EXT_SUFFIX'))")"
ext_key="$( (cd "$here" && cat setup.py ssn_norm/csrc/*) | sha256sum | cut -c1-16)"
ext_key="$ext_key-$( { "$py" -c "import sys, torch; print(sys.version, torch.__version__, torch.__file__)"; \
    "${CXX:-c++}" --version 2>/dev/null | head -n1; } | sha256sum | cut -c1-16)"
cached_ext="$ext_cache/$ext_key/$ext_name"
ext_ok() { (cd "$here" && "$py" -c "import ssn_norm._ext") >/dev/null 2>&1; }
installed_ext=0
if [ -f "$cached_ext" ]; then
    echo "[install] reusing the C++ kernels built before from the same sources ($cached_ext)"
    cp "$cached_ext" "$here/ssn_norm/$ext_name"
    if SSN_NORM_BUILD_EXT=0 pip_install --no-build-isolation --no-deps -e "$here" && ext_ok; then
        installed_ext=1
    else
        echo "[install] the cached kernels do not import; building them"
        rm -f "$here/ssn_norm/$ext_name"
    fi
fi
if [ "$installed_ext" = 0 ]; then
    pip_install --no-build-isolation --no-deps -e "$here"
    if [ -f "$here/ssn_norm/$ext_name" ] && ext_ok; then
        mkdir -p "$ext_cache/$ext_key"
        cp "$here/ssn_norm/$ext_name" "$cached_ext.partial" && mv "$cached_ext.partial" "$cached_ext"
    fi
fi
pip_install -r "$here/requirements/tests.txt"
"$py" -c "import ssn_norm, mmdet.models, mmseg.models, mmaction.models; print('[install] ok: ssn_norm', ssn_norm.__version__)"
