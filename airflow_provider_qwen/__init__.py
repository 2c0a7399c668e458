"""Apache Airflow provider for Qwen image-to-image edits served by the Apikley API."""

from __future__ import annotations

from airflow_provider_qwen.connection_form import CONNECTION_TYPE

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]


def get_provider_info() -> dict:
    """Describe the provider to Airflow's providers manager (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-qwen",
        "name": "Qwen image-to-image (Apikley)",
        "description": "Edit images with Qwen's image-to-image model, or run any Apikley model, through Apikley.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Apikley",
                "external-doc-url": "https://docs.apikley.ru",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Apikley", "python-modules": ["airflow_provider_qwen.hooks.apikley"]}],
        "operators": [
            {
                "integration-name": "Apikley",
                "python-modules": [
                    "airflow_provider_qwen.operators.apikley",
                    "airflow_provider_qwen.operators.qwen",
                    "airflow_provider_qwen.operators.batch",
                    "airflow_provider_qwen.operators.review",
                ],
            }
        ],
        "sensors": [{"integration-name": "Apikley", "python-modules": ["airflow_provider_qwen.sensors.apikley"]}],
        "triggers": [
            {
                "integration-name": "Apikley",
                "python-modules": ["airflow_provider_qwen.triggers.apikley", "airflow_provider_qwen.triggers.batch"],
            }
        ],
        "connection-types": [CONNECTION_TYPE],
        "extra-links": ["airflow_provider_qwen.links.ApikleyTaskLink"],
        # Airflow 3.2+ reads this; 3.1 needs the class in [database] external_db_managers.
        "db-managers": ["airflow_provider_qwen.api_server.db_manager.ApikleyDBManager"],
        "config": {
            "apikley": {
                "description": "The Apikley callback receiver on the api-server, and when triggers resume workers.",
                "options": {
                    "allow_unsigned_callbacks": {
                        "description": (
                            "Accept unsigned callbacks for apikley_default when that connection has no webhook_secret. "
                            "Anyone who can reach the api-server can then record Asset events and spend status "
                            "queries of the account: leave it off unless the api-server is reachable only by Apikley."
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "callback_fallback_seconds": {
                        "description": (
                            "Seconds between a wait's own queries to Apikley when the task calls back to this "
                            "deployment's receiver, read by the triggerer: the wait ends on the callback, and "
                            "this only ends it when the callback is lost. A number above 0."
                        ),
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "120",
                        "default": "60",
                    },
                    "callback_connections": {
                        "description": (
                            "The connections the callback receiver may use besides apikley_default, "
                            "comma-separated. A callback naming another is refused before the connection is "
                            "looked up, so forged callbacks cannot make the api-server query a secrets backend "
                            "for names of their choosing. Unset (the default), any name shaped like a connection "
                            "id is looked up."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "apikley_team_a,apikley_team_b",
                        "default": "",
                    },
                    "recorded_task_retention_days": {
                        "description": (
                            "Days the callback receiver remembers a task it recorded as an Asset event: a "
                            "delivery of the same task within them records nothing more. Older entries are "
                            "deleted as new ones are recorded. At least 1: a smaller value is logged as an "
                            "error and the default used."
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "7",
                        "default": "30",
                    },
                    "resume_settle_seconds": {
                        "description": (
                            "Seconds after a task deferred before its trigger resumes it on a worker, read by the "
                            "triggerer. Airflow 3.1-3.3 can fail a task resumed before the scheduler has read the "
                            "executor's report on the run that deferred (apache/airflow#66374, #72716); a busy "
                            "scheduler reads it seconds late. A number, 0 or more; 0 resumes at once."
                        ),
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "30",
                        "default": "10",
                    },
                },
            }
        },
    }
