#!/usr/bin/env bash
# The project's one test command: installs what the checks need, then runs all of them.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k sqlite -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real etcd (the oracle the tests compare against), its Go client etcdctl, and Go with etcd's client
# sources, which the benchmark's load generator is built from.
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v go >/dev/null \
    || [ ! -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client golang-go golang-etcd-server-dev >/dev/null
fi
python -m pip install -q --disable-pip-version-check -e '.[test]'

ruff check src tests bench scripts
ruff format --check src tests bench scripts
lint-imports
unformatted_go=$(gofmt -l bench/loadgen)
if [ -n "$unformatted_go" ]; then echo "gofmt would reformat: $unformatted_go" >&2; exit 1; fi
mypy
# Servers are real processes that mostly wait on each other, so tests run in parallel workers; the
# few that stop the shared PostgreSQL or MariaDB server run afterwards, alone. Exit status 5 (no test
# selected, e.g. by -k) is not a failure of either run.
status=0
python -m pytest -n "${KUBEFABRIC_TEST_WORKERS:-4}" -m "not stops_databases" "$@" || status=$?
[ "$status" -eq 5 ] && status=0
python -m pytest -m stops_databases "$@" || { code=$?; [ "$code" -eq 5 ] || status=$code; }
exit "$status"
