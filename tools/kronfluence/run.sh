#!/usr/bin/env bash
# kronfluence's EK-FAC scores for the exported bundle, compared with ours (docs/accuracy.md (vii)).
#
#   cargo run --release -p tiny-gpt --bin kronfluence-export   # the bundle (10 s)
#   tools/kronfluence/run.sh                                    # venv (first time: ~3 GB, a few minutes), then ~10 s
#
# The pinned pair: torch 2.4.1 (PyPI's CUDA build; it runs on the CPU here) with kronfluence 1.0.1
# on CPython 3.11, every package version in requirements.txt. VENV overrides the venv's place.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/target/kronfluence-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --progress-bar off -r "$here/requirements.txt"
fi
cd "$root"
exec "$venv/bin/python" "$here/kronfluence_scores.py" "$@"
