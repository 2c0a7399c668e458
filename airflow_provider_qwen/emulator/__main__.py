"""``python -m airflow_provider_qwen.emulator`` (or ``apikley-emulator``): serve a local Apikley."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn

from airflow_provider_qwen.emulator.app import create_app
from airflow_provider_qwen.emulator.settings import EmulatorSettings


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EmulatorSettings]:
    parser = argparse.ArgumentParser(prog="apikley-emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--config", type=Path, help="JSON file of EmulatorSettings (faults included)")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable)")
    parser.add_argument("--credits", type=float)
    parser.add_argument("--latency", type=float, nargs=3, metavar=("WAITING", "QUEUING", "GENERATING"))
    parser.add_argument("--fail-fraction", type=float)
    parser.add_argument("--callback-key", help="HMAC key that signs callbacks")
    parser.add_argument("--callback-twice", action="store_true", default=None)
    parser.add_argument("--allow-image-host", action="append", dest="allowed_image_hosts")
    parser.add_argument("--upload-base-path", help="where the upload API lives (default /file-upload)")
    parser.add_argument("--maintenance-seconds", type=float)
    parser.add_argument("--seed", type=int, dest="random_seed")
    args = parser.parse_args(argv)
    values = json.loads(args.config.read_text()) if args.config else {}
    for name in (
        "api_keys",
        "credits",
        "latency",
        "fail_fraction",
        "callback_key",
        "callback_twice",
        "allowed_image_hosts",
        "maintenance_seconds",
        "random_seed",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return args, EmulatorSettings.model_validate(values)


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator in the foreground until interrupted."""
    args, settings = parse_args(argv)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", lifespan="off")


if __name__ == "__main__":
    main()
