#!/usr/bin/env bash
# Refresh requirements/lock.txt: every package steerwatch and all its extras need, at exact versions,
# resolved by uv from pyproject.toml against the torch pinned in requirements/torch.txt (torch itself
# is left out of the lock: it is installed first, see the README). Needs uv (`pip install uv`).
#
#   scripts/lock.sh             keep the versions already locked where pyproject.toml still allows them
#   scripts/lock.sh --upgrade   take the newest versions pyproject.toml allows
#
# Then run the suite (.ci/run) before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || { echo "scripts/lock.sh needs uv: pip install uv" >&2; exit 2; }
# torch's own dependencies differ between its CPU and CUDA builds: resolve against the CPU build,
# from the local wheel directory where this machine has one, else from PyTorch's CPU index.
if [ -d /opt/wheels ]; then torch_source=(--find-links /opt/wheels); else torch_source=(--torch-backend cpu); fi
uv pip compile pyproject.toml --all-extras --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
    -c requirements/torch.txt --no-emit-package torch "${torch_source[@]}" \
    --custom-compile-command "scripts/lock.sh" --quiet -o requirements/lock.txt "$@"
