#!/bin/sh
# Creates (or reuses) the virtualenv the Python tests run in, and prints its python's path.
#   tools/python_env.sh [VENV_DIR [REQUIREMENTS]]   (defaults: build-venv in the source tree,
#                                                    tools/requirements-test.txt)
# It is made from Debian's /usr/bin/python3 with --system-site-packages, so Debian's numpy and
# torch (the golden reference) stay the ones imported; the PyPI packages in
# tools/requirements-test.txt (pinned) are installed into it. A stamp of that file's hash makes a
# second run reuse the environment without touching the network.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$src/build-venv}
requirements=${2:-$src/tools/requirements-test.txt}
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$venv/bin/python"
    exit 0
fi
/usr/bin/python3 -m venv --system-site-packages "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
