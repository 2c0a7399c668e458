"""
Serve a local Apikley: ``python -m airflow_provider_qwen.emulator`` (with the ``emulator`` extra).

Every setting has a flag; ``--config`` reads them all from a JSON file first (flags win).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from airflow_provider_qwen.emulator.app import create_app
from airflow_provider_qwen.emulator.settings import ENDPOINTS, FAULT_KINDS, EmulatorSettings

#: flag destination → EmulatorSettings field, for the flags that set one.
_SETTING_FLAGS = {
    "api_keys": "api_keys",
    "credits": "credits",
    "cost_per_task": "cost_per_task",
    "rate_limit": "create_rate_limit",
    "rate_window": "create_rate_window",
    "latency": "latency",
    "jitter": "jitter",
    "fail_fraction": "fail_fraction",
    "file_ttl": "file_ttl",
    "download_link_ttl": "download_link_ttl",
    "upload_base_path": "upload_base_path",
    "allowed_image_hosts": "allowed_image_hosts",
    "callback_key": "callback_key",
    "callback_twice": "callback_twice",
    "callback_attempts": "callback_attempts",
    "callback_timeout": "callback_timeout",
    "callback_backoff": "callback_backoff",
    "callback_drop": "callback_drop",
    "maintenance_seconds": "maintenance_seconds",
    "random_seed": "random_seed",
}


def parse_fault(text: str) -> tuple[str, dict[str, float]]:
    """``ENDPOINT:KIND=RATE[,KIND=RATE...]``, e.g. ``recordInfo:server_error=0.1,slow=0.2,slow_seconds=5``."""
    endpoint, _, spec = text.partition(":")
    if endpoint not in ENDPOINTS or not spec:
        raise argparse.ArgumentTypeError(f"expected ENDPOINT:KIND=VALUE[,...] with ENDPOINT one of {ENDPOINTS}")
    values: dict[str, float] = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=NUMBER") from None
    return endpoint, values


def build_parser(prog: str = "python -m airflow_provider_qwen.emulator") -> argparse.ArgumentParser:
    """Return the emulator's command line, as ``prog`` runs it."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local Apikley-compatible API (qwen/image-to-image) with real, simple image edits.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    add("--port", type=int, default=8765, help="port to bind (default: 8765; 0 picks a free one)")
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add("--config", type=Path, help="JSON file of EmulatorSettings fields; the flags below override it")
    add("--api-key", action="append", dest="api_keys", help="accepted API key (repeatable; default: test-key)")
    add("--credits", type=float, help="starting credits (default: 1000)")
    add("--cost-per-task", type=float, help="credits charged per accepted task (default: 1)")
    add("--rate-limit", type=int, help="new tasks per key per window (default: 20)")
    add("--rate-window", type=float, help="rate limit window in seconds (default: 10)")
    add(
        "--latency",
        type=float,
        nargs=3,
        metavar=("WAITING", "QUEUING", "GENERATING"),
        help="seconds in each state before jitter (default: 0.5 1 2)",
    )
    add("--jitter", type=float, help="latency jitter, a fraction (default: 0.2)")
    add("--fail-fraction", type=float, help="fraction of tasks that fail with failCode 501 (default: 0)")
    add("--file-ttl", type=float, help="seconds results and uploads stay available (default: 86400)")
    add("--download-link-ttl", type=float, help="seconds a download-url link stays valid (default: 1200)")
    add("--upload-base-path", help="where the upload API lives (default: /file-upload)")
    add(
        "--allow-image-host",
        action="append",
        dest="allowed_image_hosts",
        help="host (name or name:port) image_url and fileUrl may be fetched from, besides the emulator (repeatable)",
    )
    add("--callback-key", help="HMAC key that signs callbacks (default: unsigned)")
    add("--callback-twice", action="store_true", default=None, help="deliver every callback twice")
    add("--callback-attempts", type=int, help="tries per callback delivery (default: 3)")
    add("--callback-timeout", type=float, help="seconds per callback POST (default: 15)")
    add("--callback-backoff", type=float, help="seconds before the first callback retry, doubling (default: 1)")
    add("--callback-drop", type=float, help="fraction of callbacks never sent, at random (default: 0)")
    add(
        "--fault",
        action="append",
        type=parse_fault,
        dest="faults",
        metavar="ENDPOINT:KIND=VALUE[,...]",
        help=f"inject faults (repeatable); kinds: {', '.join(FAULT_KINDS)}, slow_seconds, retry_after",
    )
    add("--maintenance-seconds", type=float, help="answer 455 to every API call for this long after start")
    add("--seed", type=int, dest="random_seed", help="random seed for jitter, failures and faults")
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    """Return the settings the parsed command line describes."""
    values: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for dest, field in _SETTING_FLAGS.items():
        if getattr(args, dest) is not None:
            values[field] = getattr(args, dest)
    for endpoint, faults in args.faults or []:
        values.setdefault("faults", {}).setdefault(endpoint, {}).update(faults)
    return EmulatorSettings.model_validate(values)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Serve the emulator in the foreground until interrupted; ``prog`` names the command in its help."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValidationError, OSError, ValueError) as err:
        parser.error(str(err))
    app = create_app(settings)
    if args.port:
        base = f"http://{args.host}:{args.port}"
        print(f"Apikley emulator: API {base}, uploads {base}{settings.upload_base_path}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="off")


if __name__ == "__main__":
    main()
