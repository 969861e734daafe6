#!/bin/sh
# Creates (or reuses) the virtualenv Ray Serve runs in for the serve/ tests and bench, and prints
# its python's path.
#   tools/ray_env.sh [VENV_DIR]      (default: build-rayvenv in the source tree)
# tools/python_env.sh with tools/requirements-ray.txt: Debian's /usr/bin/python3 with
# --system-site-packages (Debian's numpy; the interpreter build-venv has, so the itera module meson
# builds for build-venv imports here too, from the build's python/ directory) plus the pinned
# ray[serve] and what it needs; a stamp of the file's hash makes later runs reuse it without the
# network. The first run downloads and installs Ray (about 3-4 minutes on the 2-core VM).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
exec "$src/tools/python_env.sh" "${1:-$src/build-rayvenv}" "$src/tools/requirements-ray.txt"
