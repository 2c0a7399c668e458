"""
The Helm values of docs/cluster.md, checked: every Airflow option they set exists (Airflow's own
or a provider's), and they set what "Deploying as a cluster" says a cluster needs. They start no
cluster, and run with the cluster tests (``make cluster-test``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.docs import snippets

pytestmark = pytest.mark.cluster


def helm_values() -> dict[str, Any]:
    """The docs' values file for the official chart: its YAML block that sets the CeleryExecutor."""
    (values,) = [yaml.safe_load(s.code) for s in snippets("yaml") if "executor: CeleryExecutor" in s.code]
    return values


def test_every_airflow_option_the_helm_values_set_exists():
    from airflow.configuration import conf

    known = conf.configuration_description  # Airflow's options and every installed provider's
    unknown = [
        f"[{section}] {option}"
        for section, options in helm_values()["config"].items()
        for option in options
        if option not in known.get(section, {}).get("options", {})
    ]
    assert not unknown, f"the docs' Helm values set options Airflow does not have: {unknown}"


def test_the_helm_values_set_what_a_cluster_needs():
    values = helm_values()
    assert values["executor"] == "CeleryExecutor"
    replicas = {
        "workers": values["workers"]["celery"]["replicas"],
        "triggerer": values["triggerer"]["replicas"],
        "apiServer": values["apiServer"]["replicas"],
    }
    assert min(replicas.values()) >= 2, replicas
    assert "AIRFLOW_CONN_APIKLEY_DEFAULT" in {secret["envName"] for secret in values["secret"]}
    # Apikley calls back on [api] base_url: the public name the api-servers are reached on.
    base_url = urlsplit(values["config"]["api"]["base_url"])
    assert base_url.scheme == "https"
    assert values["ingress"]["apiServer"]["enabled"] is True
    assert base_url.hostname in {host["name"] for host in values["ingress"]["apiServer"]["hosts"]}
    assert isinstance(values["config"]["triggerer"]["capacity"], int)
