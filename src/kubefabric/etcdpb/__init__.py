"""Generated etcd v3 wire messages and gRPC stubs (see proto/ and scripts/regen_protos.sh)."""
