#!/usr/bin/env bash
# Make a virtualenv at $1 with pymesos (PyPI) for the compatibility tests. pymesos needs
# http-parser, whose C extension does not build on Python 3.11: its pure-Python parser
# (http_parser/pyparser.py, which http_parser.http falls back to) is installed from the
# sdist instead, without building anything. Does nothing if $1 already has both.
set -euo pipefail
venv=$1
check() { "$venv/bin/python" -c 'import pymesos, http_parser.http' 2>/dev/null; }
check && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$venv"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" --no-deps pymesos==0.3.15 six addict
"$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" http-parser==0.9.0
tar -xzf "$tmp"/http-parser-0.9.0.tar.gz -C "$tmp"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/http_parser"
cp "$tmp"/http-parser-0.9.0/http_parser/*.py "$site/http_parser/"
check || { echo "pymesos is not importable in $venv" >&2; exit 1; }
