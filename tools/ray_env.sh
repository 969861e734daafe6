#!/bin/sh
# Creates (or reuses) the virtualenv Ray Serve runs in for the serve/ tests and bench, and prints
# its python's path.
#   tools/ray_env.sh [VENV_DIR]      (default: build-rayvenv in the source tree)
# As tools/python_env.sh: Debian's /usr/bin/python3 with --system-site-packages (Debian's numpy;
# the same interpreter build-venv has, so the itera module meson builds for build-venv imports here
# too, from the build's python/ directory), plus the pinned tools/requirements-ray.txt. A stamp of
# that file's hash makes a later run reuse it without the network. The first run downloads and
# installs Ray (about 4 minutes on the 2-core VM).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$src/build-rayvenv}
requirements=$src/tools/requirements-ray.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$venv/bin/python"
    exit 0
fi
rm -f "$stamp"
/usr/bin/python3 -m venv --system-site-packages "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
