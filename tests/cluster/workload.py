"""The cluster test's workload (DAG ``qwen_cluster_edits``) and its emulator, also run by ``tests.cluster.compare``."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.system.deployment import AirflowDeployment, EmulatorProcess

DAG_ID = "qwen_cluster_edits"
#: The pool that holds the straggler back (see the DAG).
GATE_POOL = "qwen_cluster_gate"
#: What the callback receiver updates for every finished edit.
FINISHED_EDITS_ASSET = "apikley://qwen/image-to-image"
DAGS = sorted((Path(__file__).parent / "dags").glob("*.py"))

SINGLE_EDITS = 120
BATCHES = 2
BATCH_SIZE = 40
#: Everything but the straggler.
FIRST_WAVE = SINGLE_EDITS + BATCHES * BATCH_SIZE
EDITS = FIRST_WAVE + 1

#: Seconds each emulated edit spends waiting, queuing and generating (each ±20 %).
GENERATION_LATENCY = (2.0, 4.0, 6.0)
#: Task processes per Celery worker; the single-node comparison gets as many LocalExecutor slots in all.
WORKER_CONCURRENCY = 3
#: The key the emulator signs its callbacks with, and the connection's ``webhook_secret``.
WEBHOOK_SECRET = f"cluster-webhook-{secrets.token_hex(16)}"


class WorkloadEmulator(EmulatorProcess):
    """
    The emulator for the workload: edits of ~12 s, every callback signed and delivered twice (as Apikley may).

    Its API key is one no log line could hold by chance: the cluster test searches every log for it.
    """

    api_key = f"qwen-cluster-key-{secrets.token_hex(16)}"

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir, latency=GENERATION_LATENCY, callback_key=WEBHOOK_SECRET, extra_args=["--callback-twice"]
        )


def trigger_workload(deployment: AirflowDeployment, output: Path, *, straggler_pause: int = 0) -> str:
    """Start a run of the workload, every result stored under ``output``; return its run id."""
    return deployment.trigger(
        DAG_ID,
        {
            "single_edits": SINGLE_EDITS,
            "batches": BATCHES,
            "batch_size": BATCH_SIZE,
            "straggler_pause": straggler_pause,
            "output_uri": f"file://{output}",
        },
    )


def create_gate_pool(deployment: AirflowDeployment, slots: int) -> None:
    deployment.rest.request("POST", "pools", json={"name": GATE_POOL, "slots": slots, "description": "straggler gate"})


def open_gate_pool(deployment: AirflowDeployment) -> None:
    deployment.rest.request(
        "PATCH", f"pools/{GATE_POOL}", json={"pool": GATE_POOL, "slots": 1, "include_deferred": False}
    )
