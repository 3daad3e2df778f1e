#!/usr/bin/env bash
# The project's one test command: installs what the checks need, then runs all of them.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k sqlite -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real etcd (the oracle the tests compare against) and its Go client, etcdctl.
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
python -m pip install -q --disable-pip-version-check -e '.[test]'

ruff check src tests bench scripts
ruff format --check src tests bench scripts
lint-imports
mypy
python -m pytest "$@"
