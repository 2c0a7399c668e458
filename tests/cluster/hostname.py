"""
Airflow's ``[core] hostname_callable`` for the cluster's components: the name each was given.

Every component runs on this one machine, so the default (the machine's name) would give both
Celery workers, and both triggerers, the same ``hostname`` in the task instance and job tables.
"""

from __future__ import annotations

import os
import socket

#: The variable a component's name is given in.
HOSTNAME_VARIABLE = "QWEN_CLUSTER_HOSTNAME"
#: The value of ``[core] hostname_callable`` that reads it.
HOSTNAME_CALLABLE = f"{__name__}.from_environment"


def from_environment() -> str:
    """The component's name, or the machine's when it was given none."""
    return os.environ.get(HOSTNAME_VARIABLE) or socket.getfqdn()
