"""Label and field selectors answered in storage, checked against a model of Kubernetes' own matching."""
