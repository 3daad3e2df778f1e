"""Tests of the topology rules (pure logic) and the `route` / `topology check` commands."""

# The example of the task: every matcher, with endpoints of every kind (none is connected to).
EXAMPLE = """\
backends:
- name: rbac
  endpoint: http://127.0.0.1:2379
  regexp:
    prefix: (clusterrolebindings|clusterroles|rolebindings|roles|serviceaccounts)
    key: (clusterrolebindings|clusterroles|rolebindings|roles|serviceaccounts)
- name: kube-system
  endpoint: mysql://root:@tcp(127.0.0.1:3306)/kube_system
  namespace:
    namespace: kube-system
- name: pods
  endpoint: postgres://postgres@127.0.0.1:5432/pods
  prefix:
    prefix: pods
- name: shirts
  endpoint: sqlite://./db/shirts.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate
  customresource:
    group: stable.example.com
    kind: shirts
"""
DEFAULT_ENDPOINT = "sqlite:///db/main.db"
