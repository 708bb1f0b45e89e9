#!/bin/sh
# What tests/test_server_browser.py needs: Debian's Chromium and the playwright Python package.
# Never `playwright install`: the test drives /usr/bin/chromium through executable_path.
# Usage (as root, from the repository root): sh .ci/install-browser.sh [path/to/python]
set -eu
PYTHON="${1:-${PYTHON:-.venv/bin/python}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
"$PYTHON" -m pip install "playwright>=1.40"
/usr/bin/chromium --version
"$PYTHON" -c "import playwright.sync_api; print('playwright ok')"
