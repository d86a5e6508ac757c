#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it (slow, real-data and browser tests too).
# Safe to rerun: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision are pinned in pyproject.toml (CPU-usable 2.14.1 / 0.29.1).
.venv/bin/python -m pip install --quiet -e ".[test]"
# The example notebook's test starts kernel "python3": this venv's own python, not a system one.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null

# The browser tests drive Debian's Chromium through Playwright; never a downloaded browser.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Chromium for the browser tests (apt-get)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
      || echo "could not install Chromium: browser tests will be skipped"
  else
    echo "Chromium not found at /usr/bin/chromium and not root: browser tests will be skipped"
  fi
fi

exec .venv/bin/python -m pytest "$@"
