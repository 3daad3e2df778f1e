"""The manifests in deploy/ that label objects for the storage-side collector: each parses, is an admission
policy or binding of the API kube-apiserver serves for them, and adds exactly the label the server collects.
No cluster runs here, so the CEL is checked as text: it must name the label and patch nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubefabric.objects import COLLECTED_LABEL
from tests._servers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
API_VERSION = "admissionregistration.k8s.io/v1beta1"
POLICY, BINDING = "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"
LABELS_PATH = "/metadata/labels"


def manifest_files() -> list[Path]:
    return sorted(path for path in DEPLOY.iterdir() if path.suffix in (".yaml", ".yml"))


def documents(kind: str | None = None) -> list[dict[str, Any]]:
    """Every object in every manifest of deploy/ (of `kind`, when given)."""
    found = []
    for path in manifest_files():
        found += [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    return [document for document in found if kind is None or document["kind"] == kind]


def test_there_is_a_policy_and_a_binding_for_it() -> None:
    assert manifest_files()
    assert documents(POLICY)
    assert {binding["spec"]["policyName"] for binding in documents(BINDING)} == {
        policy["metadata"]["name"] for policy in documents(POLICY)
    }


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_object_is_a_mutating_admission_policy_or_binding(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert document["apiVersion"] == API_VERSION
        assert document["kind"] in (POLICY, BINDING)
        assert document["metadata"]["name"]


def test_the_policy_labels_created_objects_that_lack_the_label() -> None:
    for policy in documents(POLICY):
        spec = policy["spec"]
        assert [rule["operations"] for rule in spec["matchConstraints"]["resourceRules"]] == [["CREATE"]]
        conditions = " ".join(condition["expression"] for condition in spec["matchConditions"])
        assert f'"{COLLECTED_LABEL}" in object.metadata.labels' in conditions
        [mutation] = spec["mutations"]
        assert mutation["patchType"] == "JSONPatch"
        expression = mutation["jsonPatch"]["expression"]
        patched_paths = set(re.findall(r'path:\s*"([^"]*)"', expression))
        # Adds the map when the object has no labels yet, then the label itself, and touches nothing else.
        assert patched_paths == {LABELS_PATH, f"{LABELS_PATH}/{COLLECTED_LABEL}"}
        assert set(re.findall(r'op:\s*"([^"]*)"', expression)) == {"add"}
        assert "has(object.metadata.labels)" in expression
        assert spec["failurePolicy"] == "Fail"


def test_the_binding_chooses_created_resources() -> None:
    for binding in documents(BINDING):
        rules = binding["spec"]["matchResources"]["resourceRules"]
        assert rules
        for rule in rules:
            assert rule["operations"] == ["CREATE"]
            assert rule["apiGroups"] and rule["resources"]


def test_the_readme_names_every_manifest_and_the_flags_the_api_needs() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in manifest_files():
        assert f"deploy/{path.name}" in readme
    assert "--feature-gates=MutatingAdmissionPolicy=true" in readme
    assert f"--runtime-config={API_VERSION}=true" in readme
