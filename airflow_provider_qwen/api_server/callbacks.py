"""
``POST /apikley/callback``: where Apikley tells Airflow that a task ended.

Mounted on the Airflow api-server by :mod:`airflow_provider_qwen.api_server.plugin`. Anyone can
reach it, so it trusts nothing it is sent:

- The body is read up to :data:`MAX_CALLBACK_BYTES`; only ``data.taskId`` is taken from it, and
  only when it is shaped like a task id.
- The connection is ``apikley_default`` unless the URL names another, which must be shaped like a
  connection id and, when the deployment sets ``[apikley] callback_connections``, listed there:
  checked before anything is looked up (see :mod:`~airflow_provider_qwen.api_server.refusals`).
  The asset is ``apikley://<model>`` unless the URL names another; a URL that names either must carry the
  ``token`` that :func:`~airflow_provider_qwen.api_server.urls.callback_url` signs with one of that
  connection's ``route_keys``, which Apikley never sees. A connection that is not of type
  ``apikley`` is never used.
- Apikley's signature (``X-Webhook-Signature``) is checked with the connection's webhook key; a
  connection without one takes unsigned callbacks only where the deployment opted in with
  ``[apikley] allow_unsigned_callbacks = True``, and then only for the default connection and asset.
- Every refusal is the same bare 401, so answers tell nothing about which connections exist, and
  is logged as a warning at most once a minute for each kind of refusal. A
  fault while reading the connection (a secrets backend or the database down) is not a refusal:
  it is logged as an error and answered 503, so Apikley sends again and operators see an outage.
- The task's state is then read from Apikley, never taken from the body. A finished task's record
  is kept for the triggers waiting for it (:mod:`~airflow_provider_qwen.api_server.awaited`), and
  the task is recorded once as an Asset event. The signature is spent in the transaction that records the
  event (or finds the task recorded already, answered 200 with ``recorded`` false): a delivery for
  a task Apikley still reports as running, or one that meets a fault, is answered 503 and spends
  nothing, so the same delivery sent again is recorded then. A taken delivery sent again is
  refused (401). When no DAG uses the model's default asset there is no event to record: the
  delivery is taken all the same (200, ``recorded`` false), since the tasks waiting for it were
  told; an asset the URL names and no DAG uses is answered 404, and sent again once one does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow.providers.common.compat.sdk import AirflowNotFoundException, conf

from airflow_provider_qwen.api_server.asset_events import (
    Outcome,
    UnknownAsset,
    default_asset_uri,
    record_finished_task,
)
from airflow_provider_qwen.api_server.deliveries import DeliveriesUnavailable, keep_delivery
from airflow_provider_qwen.api_server.refusals import RefusalLog, connection_refusal
from airflow_provider_qwen.api_server.signing import (
    CallbackRejected,
    CheckedSignature,
    SignatureChecker,
    check_route_token,
)
from airflow_provider_qwen.exceptions import ApikleyConfigurationError, ApikleyError, ApikleyNotFoundError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, TaskRecord
from airflow_provider_qwen.validation import is_task_id

log = logging.getLogger(__name__)

#: The largest callback body read; Apikley's are a few KB.
MAX_CALLBACK_BYTES = 256 * 1024
#: Re-reading the task must fit in Apikley's 15 s delivery timeout: one quick retry at most.
RECHECK_RETRY_POLICY = RetryPolicy(attempts=2, initial_wait=0.5, max_wait=1.0)
#: Seconds one re-read may take.
RECHECK_TIMEOUT_SECONDS = 5.0
#: The ``[apikley]`` option that lets a connection without a webhook key take unsigned callbacks.
ALLOW_UNSIGNED_OPTION = "allow_unsigned_callbacks"


class ConnectionUnreadable(Exception):
    """Reading the callback's connection failed on Airflow's side: an outage, answered 503, never a refusal."""

    def __init__(self, conn_id: str) -> None:
        super().__init__(f"connection {conn_id!r} could not be read (secrets backend or database fault)")


class BodyTooLarge(Exception):
    """The callback's body is over :data:`MAX_CALLBACK_BYTES`."""


async def read_bounded(request: Request, limit: int = MAX_CALLBACK_BYTES) -> bytes:
    """
    Return the request's body, read no further than ``limit`` bytes.

    :raises BodyTooLarge: when ``Content-Length`` or the bytes sent go past ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def task_id_from_body(body: bytes) -> str | None:
    """Return the task id from ``data.taskId`` (or ``data.task_id``) of a callback's JSON body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    task_id = (data.get("taskId") or data.get("task_id")) if isinstance(data, dict) else None
    # it reaches logs and Apikley's query string before anything vouches for it
    return task_id if is_task_id(task_id) else None


#: What a consumer DAG reads from the Asset event: the task, how it ended, its results.
EVENT_EXTRA_FIELDS = ("apikley_task_id", "state", "result_urls", "fail_code", "fail_message", "model")


def event_extra(record: TaskRecord) -> dict[str, Any]:
    """Return the Asset event's extra for a finished task: :data:`EVENT_EXTRA_FIELDS` of its description."""
    described = record.describe()
    return {field: described[field] for field in EVENT_EXTRA_FIELDS}


@dataclass(frozen=True)
class CallbackRoute:
    """
    What a callback URL names: the connection to use and the asset to update.

    :param conn_id: the connection named by the URL, or ``None`` for ``apikley_default``.
    :param asset: the asset named by the URL, or ``None`` for ``apikley://<model>``.
    :param token: the deployment's signature over both, required when either is named.
    """

    conn_id: str | None
    asset: str | None
    token: str | None

    @property
    def names_anything(self) -> bool:
        """Whether the URL chooses a connection or an asset (and so needs a token)."""
        return self.conn_id is not None or self.asset is not None

    @property
    def effective_conn_id(self) -> str:
        """The connection named, else ``apikley_default``."""
        return self.conn_id or ApikleyHook.default_conn_name


def trusted_hook(
    route: CallbackRoute, headers: dict[str, str | None], task_id: str, checker: SignatureChecker
) -> tuple[ApikleyHook, CheckedSignature | None]:
    """
    Return the hook to re-read the task with, once everything the caller chose is vouched for.

    Reads the connection, and nothing leaves the api-server before this returns.

    :return: the hook, and the callback's signature to spend when the delivery is taken
        (``None`` for an unsigned callback the deployment accepts).
    :raises CallbackRejected: when the connection is missing or not of type ``apikley``, the URL's
        token or Apikley's signature is missing or wrong, or the callback replays a recorded one.
    :raises ConnectionUnreadable: when reading the connection failed (a secrets backend or database fault).
    """
    if refusal := connection_refusal(route.effective_conn_id):
        raise CallbackRejected(refusal, "connection not allowed")
    hook = ApikleyHook(route.effective_conn_id, timeout=RECHECK_TIMEOUT_SECONDS)
    try:
        key = hook.settings.webhook_secret
    except (AirflowNotFoundException, ApikleyConfigurationError) as err:  # unknown, or not an Apikley one
        raise CallbackRejected(
            f"connection {route.effective_conn_id!r} is not a usable Apikley connection", "connection unusable"
        ) from err
    except Exception as err:  # the secrets backend or the database failed: an outage, not a refusal
        raise ConnectionUnreadable(route.effective_conn_id) from err
    if key is None:
        if route.names_anything:
            raise CallbackRejected(
                f"connection {route.effective_conn_id!r} has no webhook key to check the callback", "no webhook key"
            )
        if not conf.getboolean("apikley", ALLOW_UNSIGNED_OPTION, fallback=False):
            raise CallbackRejected(
                f"connection {route.effective_conn_id!r} has no webhook key, "
                f"and [apikley] {ALLOW_UNSIGNED_OPTION} is off",
                "no webhook key",
            )
        return hook, None
    if route.names_anything:
        check_route_token(hook.settings.route_keys, route.effective_conn_id, route.asset or "", route.token)
    signature = checker.check(key, task_id, headers.get("X-Webhook-Timestamp"), headers.get("X-Webhook-Signature"))
    return hook, signature


def callback_router(checker: SignatureChecker | None = None) -> APIRouter:
    """
    Return the receiver's route.

    :param checker: checks signatures and whether they were spent; one per router by default.
    """
    checker = checker or SignatureChecker()
    refusals = RefusalLog(log)
    router = APIRouter()

    @router.post("/callback")
    async def receive_callback(request: Request) -> Response:
        try:
            body = await read_bounded(request)
        except BodyTooLarge:
            return JSONResponse({"detail": f"body larger than {MAX_CALLBACK_BYTES} bytes"}, status_code=413)
        task_id = task_id_from_body(body)
        if task_id is None:
            return JSONResponse({"detail": "no valid data.taskId in the body"}, status_code=400)
        query = request.query_params
        route = CallbackRoute(conn_id=query.get("conn_id"), asset=query.get("asset"), token=query.get("token"))
        headers = {name: request.headers.get(name) for name in ("X-Webhook-Timestamp", "X-Webhook-Signature")}
        try:
            hook, signature = await run_in_threadpool(trusted_hook, route, headers, task_id, checker)
        except CallbackRejected as rejected:
            return refused(task_id, rejected, refusals)
        except ConnectionUnreadable as fault:
            log.error("Apikley callback for task %s: %s", task_id, fault, exc_info=fault.__cause__)
            return JSONResponse({"detail": "connections cannot be read right now; send again"}, status_code=503)
        except DeliveriesUnavailable as fault:
            return unavailable(task_id, fault)
        try:
            return await run_in_threadpool(_record, hook, task_id, route.asset, signature, refusals)
        except DeliveriesUnavailable as fault:
            return unavailable(task_id, fault)

    return router


def refused(task_id: str, reason: CallbackRejected, refusals: RefusalLog) -> Response:
    """Answer a refusal: the reason goes to the log (a line a minute of each kind at most), the caller gets a 401."""
    refusals.warning(reason.kind, "Apikley callback for task %s refused: %s", task_id, reason)
    return Response(status_code=401)


def unavailable(task_id: str, fault: DeliveriesUnavailable) -> Response:
    """Answer a fault of the receiver's tables: an outage, logged as one and answered 503 so Apikley sends again."""
    log.error("Apikley callback for task %s: %s", task_id, fault, exc_info=fault.__cause__)
    return JSONResponse({"detail": "callbacks cannot be recorded right now; send again"}, status_code=503)


def _record(
    hook: ApikleyHook, task_id: str, asset: str | None, signature: CheckedSignature | None, refusals: RefusalLog
) -> Response:
    try:
        record = hook.get_task(task_id, retry_policy=RECHECK_RETRY_POLICY)
    except ApikleyNotFoundError:
        log.warning("Apikley callback for task %s, which Apikley does not know", task_id)
        return JSONResponse({"detail": "unknown task"}, status_code=404)
    except ApikleyError as err:
        log.warning("Apikley callback for task %s: its state could not be read: %s", task_id, err)
        return JSONResponse({"detail": "task state could not be read; send again"}, status_code=503)
    if record.task_id != task_id:
        log.warning("Apikley callback for task %s: Apikley answered about task %s", task_id, record.task_id)
        return JSONResponse({"detail": "task state could not be read; send again"}, status_code=503)
    if not record.state.is_terminal:
        log.warning("Apikley callback for task %s, which Apikley still reports as %s", task_id, record.state.value)
        return JSONResponse(
            {
                "apikley_task_id": task_id,
                "recorded": False,
                "state": record.state.value,
                "detail": "the task has not ended; send again",
            },
            status_code=503,
        )
    # Kept before the asset is looked at: a task waiting for this delivery ends whether or not a DAG uses the asset.
    keep_delivery(hook.apikley_conn_id, task_id, record.model_dump_json())
    asset_uri = asset or default_asset_uri(record.model or QWEN_IMAGE_TO_IMAGE)
    try:
        team = hook.settings.team
        outcome = record_finished_task(
            asset_uri, event_extra(record), signature, teams={team} if team else None, asset_named=asset is not None
        )
    except UnknownAsset:
        log.warning("Apikley callback for task %s: no DAG uses asset %s", task_id, asset_uri)
        return JSONResponse({"detail": f"no DAG uses asset {asset_uri}"}, status_code=404)
    if outcome is Outcome.REPLAYED:
        return refused(task_id, CallbackRejected(f"replayed callback for task {task_id}", "replayed"), refusals)
    if outcome is Outcome.NO_CONSUMER:
        return JSONResponse(
            {
                "apikley_task_id": task_id,
                "recorded": False,
                "state": record.state.value,
                "detail": f"no DAG uses asset {asset_uri}: nothing to record; the task's waits were told",
            }
        )
    recorded = outcome is Outcome.RECORDED
    return JSONResponse({"apikley_task_id": task_id, "recorded": recorded, "state": record.state.value})
