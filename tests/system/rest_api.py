"""The few calls of Airflow's public REST API (``/api/v2``) the system test makes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

#: Seconds one REST call may take; the api-server shares two cores with everything else.
REQUEST_TIMEOUT_SECONDS = 30.0

#: The largest page the API serves by default (``[api] maximum_page_limit``).
PAGE_SIZE = 100


class AirflowRestClient:
    """
    A client of one api-server. The deployment lets everyone in as admin: Airflow 3.2+ needs no token
    then, and 3.1 hands one out to anyone who asks (``GET /auth/token``), which is fetched on the first 401.

    :param base_url: the api-server's base URL, e.g. ``http://127.0.0.1:8080``.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """
        One call; the decoded JSON answer.

        :raises requests.HTTPError: on any status of 400 or more, with the body in the message.
        """
        url = f"{self.base_url}/api/v2/{path}"
        response = self.session.request(method, url, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
        if response.status_code == 401 and "Authorization" not in self.session.headers:
            self.session.headers["Authorization"] = f"Bearer {self._admin_token()}"
            response = self.session.request(method, url, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
        if response.status_code >= 400:
            raise requests.HTTPError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}", response=response
            )
        return response.json() if response.content else None

    def _admin_token(self) -> str:
        """A token for the all-admins deployment, from the simple auth manager's credential-less route."""
        response = self.session.get(f"{self.base_url}/auth/token", timeout=REQUEST_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()["access_token"]

    def health(self) -> dict[str, Any]:
        """``GET /monitor/health``: the status of the metadatabase, scheduler, triggerer and dag-processor."""
        return self.request("GET", "monitor/health")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, or ``None`` while no dag-processor has parsed it yet."""
        try:
            return self.request("GET", f"dags/{quote(dag_id, safe='')}")
        except requests.HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return None
            raise

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": paused})

    def trigger_dag_run(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a manual run now; return its run id."""
        run = self.request("POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones one per map index, all pages."""
        path = f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        found: list[dict[str, Any]] = []
        while True:
            # Ordered by id, so that pages do not shift while task instances change state.
            page = self.request("GET", path, params={"limit": PAGE_SIZE, "offset": len(found), "order_by": "id"})
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found
