#!/usr/bin/env bash
# Set up esegeta_monai in a fresh virtual environment (.venv by default) and optionally test it.
#
#   bash scripts/install.sh            # install only
#   bash scripts/install.sh --test     # install, then run the test suite
#
# torch is pinned to the 2.13.0 CPU build first, so that pip never pulls a multi-GB CUDA
# build as a side effect of resolving the other requirements. On a GPU machine install the
# torch build you need into the venv before (or instead of) this step.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# TorchRay (CC BY-NC 4.0), a test reference, only where asked (ESEGETA_TORCHRAY=1; CI sets it): --no-deps,
# as its declared requirements pull torchvision (and with it another torch); the extra has what it imports
if [ "${ESEGETA_TORCHRAY:-0}" = "1" ]; then
    "$VENV/bin/python" -m pip install --quiet --no-deps "torchray==1.0.0.2"
    "$VENV/bin/python" -m pip install --quiet -e ".[test,torchray]"
    echo "installed: torchray $("$VENV/bin/python" -c 'import torchray; print(torchray.__version__)') (CC BY-NC 4.0, tests only)"
fi
# Quantus (LGPL-3.0), a test reference for the evaluation metrics, only where asked (ESEGETA_QUANTUS=1; CI sets it):
# --no-deps, as it declares the GUI build of opencv; the extra has what it imports
if [ "${ESEGETA_QUANTUS:-0}" = "1" ]; then
    "$VENV/bin/python" -m pip install --quiet --no-deps "quantus==0.6.0"
    "$VENV/bin/python" -m pip install --quiet -e ".[test,quantus]"
    echo "installed: quantus $("$VENV/bin/python" -c 'import warnings; warnings.simplefilter("ignore"); import quantus; print(quantus.__version__)') (tests only)"
fi
"$VENV/bin/esegeta" methods > /dev/null
echo "installed: $("$VENV/bin/python" -c 'import torch, monai, captum, esegeta_monai; print(f"esegeta_monai {esegeta_monai.__version__}, torch {torch.__version__}, monai {monai.__version__}, captum {captum.__version__}")')"

if [ "${1:-}" = "--test" ]; then
    # the report's browser test drives Debian's chromium (never a downloaded browser)
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
        echo "installing Debian's chromium for the browser test (apt-get)"
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
            || echo "could not install chromium: the browser test will say so (apt-get install chromium)"
    fi
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider   # tests/ and the docstring examples
fi
