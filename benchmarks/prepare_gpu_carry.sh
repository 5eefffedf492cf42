#!/usr/bin/env bash
# Build .gpu_site/ (git-ignored, ~20 MB): the pure-Python packages the lent GPU machine lacks (trl, datasets,
# dill, multiprocess) and bitsandbytes trimmed to its CUDA 13.0 + CPU libraries, taken from this venv.
# Then run benchmarks/gpu.py there with `carry: [".gpu_site"]` (see docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
S=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
D=.gpu_site
rm -rf "$D" && mkdir -p "$D/bitsandbytes" "$D/whl"
for pkg in trl datasets dill; do
    cp -r "$S/$pkg" "$S"/"$pkg"-*.dist-info "$D/"
done
(cd "$S/bitsandbytes" && tar cf - --exclude='libbitsandbytes_*.so' .) | (cd "$D/bitsandbytes" && tar xf -)
cp "$S/bitsandbytes/libbitsandbytes_cuda130.so" "$S/bitsandbytes/libbitsandbytes_cpu.so" "$D/bitsandbytes/"
cp -r "$S"/bitsandbytes-*.dist-info "$D/"
# multiprocess ships per-Python builds: fetch the device's (Python 3.12) wheel.
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$D/whl" \
    "multiprocess==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("multiprocess"))')"
du -sh "$D"
