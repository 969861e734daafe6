#!/bin/sh
# Installs the Debian packages Itera builds and tests with, when any is missing (run as root).
set -e
packages="meson ninja-build pkg-config g++ libflatbuffers-dev flatbuffers-compiler libdnnl-dev libxsimd-dev
libzstd-dev doctest-dev nlohmann-json3-dev libcli11-dev libxxhash-dev python3-torch python3-numpy python3-venv
python3-dev libcpp-httplib-dev chromium chromium-driver python3-selenium"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
