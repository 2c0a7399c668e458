"""
``make demo``: the catalog pipeline, end to end, on the embedded Apikley emulator.

Starts the emulator on a free loopback port, points ``apikley_default`` at it, runs
``airflow dags test qwen_catalog_edit`` with an Airflow home inside the checkout, and stops the
emulator however the run ends. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / ".demo"
API_KEY = "demo-key"


def airflow_env(connection: str, output: Path) -> dict[str, str]:
    """The environment ``airflow`` runs in: its home, the DAGs folder and the connection."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(DEMO_DIR / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "QWEN_CATALOG_OUTPUT_URI": f"file://{output}",
        "AIRFLOW_CONN_APIKLEY_DEFAULT": connection,
    }


def airflow(*args: str, env: dict[str, str]) -> None:
    subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, check=True)


def main() -> int:
    output = DEMO_DIR / "output"
    shutil.rmtree(output, ignore_errors=True)
    settings = EmulatorSettings(api_keys=[API_KEY], latency=(0.2, 0.3, 1.0))
    started = time.monotonic()
    with run_emulator(settings) as emulator:
        env = airflow_env(emulator.airflow_connection(), output)
        airflow("db", "migrate", env=env)
        airflow("dags", "test", "qwen_catalog_edit", env=env)
    manifest = json.loads((output / "manifest.json").read_text())
    print(f"\nEdited {len(manifest['items'])} products in {time.monotonic() - started:.0f} s.")
    print(f"Credits used:  {manifest['credits_consumed']:g}")
    print(f"Manifest:      {output / 'manifest.json'}")
    print(f"Contact sheet: {output / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
