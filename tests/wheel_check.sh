#!/usr/bin/env bash
# Issue 12: a wheel built from the repo, installed without the source tree, carries the shipped
# model and the app's files: it builds the demo and runs the whole pipeline on generated images.
# Dependencies come from the project's .venv (put on PYTHONPATH, where its editable-install hook
# is not processed), so drlcore itself can only be imported from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/dist" . 2>&1 \
  | grep -v '^WARNING: Location' || true
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$work"/dist/drlcore-*.whl 2>&1 \
  | grep -v '^WARNING: Location' || true
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

cd "$work"   # away from the source tree
export PYTHONPATH="$site" DRL_CACHE_DIR="$work/cache" DRL_RUNS_DIR="$work/runs"
where=$("$work/venv/bin/python" -c 'import drlcore, explorer; print(drlcore.__file__, explorer.__file__)')
case "$where" in
  *"$root"*) echo "wheel check: drlcore was imported from the source tree ($where)"; exit 1 ;;
esac
"$work/venv/bin/python" - <<'PY'
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for label, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
    folder = Path("images") / label
    folder.mkdir(parents=True)
    for i in range(24):
        img = np.full((64, 64, 3), 235, np.uint8)
        r = int(rng.integers(8, 24))
        yy, xx = np.mgrid[:64, :64]
        img[(yy - 32) ** 2 + (xx - 32) ** 2 < r * r] = colour
        Image.fromarray(img).save(folder / f"{label}{i:02d}.png")
PY
"$work/venv/bin/drl" demo
"$work/venv/bin/drl" run images --out "$work/run" 2>&1 | tail -3
test -f "$work/run/analysis.json" && test -f "$work/runs/demo-texture-dsprites/analysis.json"
test -f "$("$work/venv/bin/python" -c 'import explorer, pathlib; print(pathlib.Path(explorer.__file__).parent / "app.py")')"
echo "wheel check: 1 passed, 0 failed"
