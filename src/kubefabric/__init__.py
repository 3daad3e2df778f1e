"""kubefabric: a drop-in etcd v3 server for Kubernetes that keeps its data in real databases."""

__version__ = "0.1.0"
