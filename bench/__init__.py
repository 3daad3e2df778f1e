"""Benchmark of kubefabric against a real etcd on kube-apiserver's request shapes: `python -m bench.run`."""
