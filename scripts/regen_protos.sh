#!/usr/bin/env bash
# Regenerate the Python etcd v3 wire modules from proto/kubefabric/etcdpb/*.proto.
#
# Output lands in src/kubefabric/etcdpb/ (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py).
# The generated files are committed to the repository and must be regenerated
# (by running this script) after editing any of the .proto files.
#
# Requires grpcio-tools (python -m grpc_tools.protoc).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python -m grpc_tools.protoc \
    -I proto \
    --python_out=src \
    --pyi_out=src \
    --grpc_python_out=src \
    proto/kubefabric/etcdpb/*.proto
