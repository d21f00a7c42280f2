#!/usr/bin/env bash
# A separate venv with the `imagecorruptions` package and the older libraries it needs
# (pkg_resources from setuptools < 81, scikit-image < 0.19 for `multichannel`, NumPy < 2 for
# `np.float_`): the reference for benchmarks/bench_corruptions.py. Needs a Python 3.10.
#   bash benchmarks/make_imagecorruptions_venv.sh [venv dir] [python3.10]
set -euo pipefail
VENV=${1:-/tmp/ic-venv}
PY=${2:-$(command -v python3.10 || echo /root/.pyenv/versions/3.10.13/bin/python3.10)}
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "numpy<1.24" "scikit-image<0.19" "scipy<1.12" "setuptools<70" \
    "opencv-python-headless<4.12" "Pillow<10" imagecorruptions==1.1.2
"$VENV/bin/python" -c "import imagecorruptions; print('imagecorruptions ok:', imagecorruptions.__file__)"
echo "export IMAGECORRUPTIONS_PYTHON=$VENV/bin/python"
