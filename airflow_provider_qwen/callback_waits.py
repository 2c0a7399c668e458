"""
Waits that end on Apikley's callback: what a triggerer hears from the provider's receiver.

An edit submitted with the provider's :func:`~airflow_provider_qwen.api_server.urls.callback_url`
is called back when it ends; the receiver on the api-server re-reads it from Apikley and keeps the
record (:mod:`~airflow_provider_qwen.api_server.awaited`). Each triggerer process keeps one
:class:`DeliveryWatch` per connection: a single held request to the api-server for every task its
triggers wait for, answered as soon as one of them is delivered. The waits then query Apikley only
as a slow fallback (:func:`callback_fallback_seconds`), for a callback that never came.

The requests are signed with the connection's API key, which stays in the triggerer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from airflow.providers.common.compat.sdk import AirflowConfigException, conf

from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.redaction import shown_setting, without_credentials

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

#: Seconds between a callback wait's own queries to Apikley, unless ``[apikley] callback_fallback_seconds`` says.
CALLBACK_FALLBACK_SECONDS = 60.0
#: The ``[apikley]`` option that sets it.
CALLBACK_FALLBACK_OPTION = "callback_fallback_seconds"
#: Seconds the api-server is asked to hold a request with nothing delivered.
HOLD_SECONDS = 25.0
#: New waits that arrive within this many seconds of each other join one request.
GATHER_SECONDS = 0.05
#: The most of an answer read.
MAX_ANSWER_BYTES = 2 * 1024 * 1024
#: Seconds before asking again after a request failed, doubling up to :data:`MAX_RETRY_SECONDS`.
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0
#: Task ids one request names (the endpoint takes up to 500).
TASKS_PER_REQUEST = 500


def callback_fallback_seconds() -> float:
    """
    Return ``[apikley] callback_fallback_seconds``: :data:`CALLBACK_FALLBACK_SECONDS` unless configured.

    :raises ApikleyConfigurationError: naming the option and its value, unless it is a number of seconds above 0.
    """
    try:
        seconds = conf.getfloat("apikley", CALLBACK_FALLBACK_OPTION, fallback=CALLBACK_FALLBACK_SECONDS)
    except (AirflowConfigException, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raw = conf.get("apikley", CALLBACK_FALLBACK_OPTION, fallback=None)
        raise ApikleyConfigurationError(
            f"[apikley] {shown_setting(CALLBACK_FALLBACK_OPTION, raw)}: must be a number of seconds above 0 "
            f"(default {CALLBACK_FALLBACK_SECONDS:g})"
        )
    return seconds


def calls_back_to_receiver(callback_url: str | None, apikley_conn_id: str) -> bool:
    """
    Whether ``callback_url`` is this deployment's receiver, checking callbacks with ``apikley_conn_id``.

    Only then does the receiver keep the task's record where its wait can read it.
    """
    from airflow_provider_qwen.api_server.urls import callback_url as receiver_url

    if not callback_url:
        return False
    receiver = urlsplit(receiver_url())
    given = urlsplit(callback_url)
    if (given.scheme, given.netloc, given.path) != (receiver.scheme, receiver.netloc, receiver.path):
        return False
    from airflow_provider_qwen.hooks import DEFAULT_CONN_ID

    named = parse_qs(given.query).get("conn_id", [DEFAULT_CONN_ID])[0]
    return named == apikley_conn_id


class DeliveryWatch:
    """
    One process's watch for the callbacks of the tasks its triggers wait for through one connection.

    A wait :meth:`subscribe` s and gets a future that is given the task's record when it is
    delivered. While anyone waits, one request is held open at the api-server for all of them
    (one per :data:`TASKS_PER_REQUEST`); a new wait joins by asking again. While the api-server
    cannot be asked, :attr:`healthy` is false and waits poll Apikley at their own cadence.

    :param apikley_conn_id: the connection the tasks were created with.
    """

    def __init__(self, apikley_conn_id: str) -> None:
        self.apikley_conn_id = apikley_conn_id
        self.healthy = True
        #: Set while the api-server cannot be asked: waits sleeping for the slow fallback wake up.
        self.failing = asyncio.Event()
        self._waiting: dict[str, set[asyncio.Future[TaskRecord]]] = defaultdict(set)
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._api_key: str | None = None
        self._warned = False

    def subscribe(self, apikley_task_id: str) -> asyncio.Future[TaskRecord]:
        """Return a future given the task's record once its callback is delivered; :meth:`unsubscribe` it after."""
        delivered: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        self._waiting[apikley_task_id].add(delivered)
        self._changed.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"apikley-deliveries-{id(self)}")
        return delivered

    def unsubscribe(self, apikley_task_id: str, delivered: asyncio.Future[TaskRecord]) -> None:
        """Stop waiting with ``delivered``."""
        futures = self._waiting.get(apikley_task_id)
        if futures is not None:
            futures.discard(delivered)
            if not futures:
                del self._waiting[apikley_task_id]
        delivered.cancel()

    async def _run(self) -> None:
        retry = FIRST_RETRY_SECONDS
        try:
            while self._waiting:
                await asyncio.sleep(GATHER_SECONDS)  # waits deferred together join one request
                self._changed.clear()
                try:
                    delivered = await self._ask_until_changed(sorted(self._waiting))
                except Exception as err:
                    self._failed(err)
                    await asyncio.sleep(retry)
                    retry = min(2 * retry, MAX_RETRY_SECONDS)
                    continue
                retry = FIRST_RETRY_SECONDS
                self._recovered()
                for task_id, record in delivered.items():
                    for future in self._waiting.pop(task_id, ()):
                        if not future.done():
                            future.set_result(record)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _ask_until_changed(self, task_ids: list[str]) -> dict[str, TaskRecord]:
        """Hold a request for ``task_ids`` until some are delivered, or a new wait joins (then nothing)."""
        chunks = [task_ids[start : start + TASKS_PER_REQUEST] for start in range(0, len(task_ids), TASKS_PER_REQUEST)]
        asks = [asyncio.ensure_future(self._ask(chunk)) for chunk in chunks]
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            done, _ = await asyncio.wait([*asks, changed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in [*asks, changed]:
                pending.cancel()
        delivered: dict[str, TaskRecord] = {}
        for ask in asks:
            if ask in done:
                delivered.update(ask.result())  # raises what the request raised
        return delivered

    async def _ask(self, task_ids: list[str]) -> dict[str, TaskRecord]:
        import aiohttp

        from airflow_provider_qwen.api_server.awaited import AWAIT_PATH
        from airflow_provider_qwen.api_server.signing import signed_headers
        from airflow_provider_qwen.app_requests import app_url

        url = app_url(AWAIT_PATH)
        if url is None:
            raise ApikleyConfigurationError("[api] base_url is not set, so the api-server cannot be asked")
        if self._api_key is None:
            from airflow_provider_qwen.hooks.apikley import ApikleyHook

            self._api_key = (await ApikleyHook(self.apikley_conn_id).asettings()).api_key
        fields = {"conn_id": self.apikley_conn_id, "apikley_task_ids": task_ids, "hold_seconds": HOLD_SECONDS}
        body = json.dumps(fields, separators=(",", ":")).encode()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HOLD_SECONDS + 15))
        async with self._session.post(
            url,
            data=body,
            headers=signed_headers(self._api_key, AWAIT_PATH, body),
            allow_redirects=False,
        ) as answer:
            text = bytearray()
            while len(text) <= MAX_ANSWER_BYTES and (chunk := await answer.content.readany()):
                text += chunk  # read() would give the first chunk only: hundreds of records come in several
            status = answer.status
        if status == 401:
            self._api_key = None  # read it again: the connection may have a new key
        if status != 200:
            raise DeliveriesUnavailableError(f"the api-server answered {status}")
        if len(text) > MAX_ANSWER_BYTES:
            raise DeliveriesUnavailableError(f"its answer is larger than {MAX_ANSWER_BYTES} bytes")
        return records_from_answer(bytes(text), set(task_ids))

    def _failed(self, err: Exception) -> None:
        self.healthy = False
        self.failing.set()
        if not self._warned:
            self._warned = True
            log.warning(
                "Could not ask the api-server for the callbacks of Apikley tasks (connection %s): %s. Until it "
                "answers, their waits ask Apikley at their usual cadence",
                self.apikley_conn_id,
                without_credentials(f"{type(err).__name__}: {err}"),
            )

    def _recovered(self) -> None:
        if not self.healthy:
            log.info("The api-server answers again: waits on connection %s end on callbacks", self.apikley_conn_id)
        self.healthy, self._warned = True, False
        self.failing.clear()


def slow_fallback(seconds: float, watch: DeliveryWatch | None, deadline: float | None, now: float) -> float:
    """
    Return how long to wait before querying Apikley, where a wait would otherwise wait ``seconds``.

    A wait whose callback is watched for (and whose watch works) asks only every
    :func:`callback_fallback_seconds`, never past its ``deadline``.
    """
    if watch is None or not watch.healthy:
        return seconds
    slowed = max(seconds, callback_fallback_seconds())
    return slowed if deadline is None else max(0.0, min(slowed, deadline - now))


async def delivered_or_slept(
    seconds: float, delivered: Iterable[asyncio.Future[TaskRecord]], watch: DeliveryWatch | None = None
) -> None:
    """
    Sleep ``seconds``, or less when one of ``delivered`` gets its record first.

    A wait sleeping for the slow fallback is woken too when ``watch`` starts failing, so that it
    goes back to its usual cadence at once.
    """
    pending: list[asyncio.Future[Any]] = [future for future in delivered if not future.done()]
    if not pending:
        await asyncio.sleep(seconds)
        return
    failing = asyncio.ensure_future(watch.failing.wait()) if watch is not None and watch.healthy else None
    if failing is not None:
        pending.append(failing)
    try:
        await asyncio.wait(pending, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if failing is not None:
            failing.cancel()


def delivered_record(delivered: asyncio.Future[TaskRecord] | None) -> TaskRecord | None:
    """Return the record ``delivered`` was given, if it was."""
    if delivered is None or not delivered.done() or delivered.cancelled():
        return None
    return delivered.result()


class DeliveriesUnavailableError(Exception):
    """The api-server could not say which tasks were delivered."""


def records_from_answer(text: bytes, asked: set[str]) -> dict[str, TaskRecord]:
    """
    Return the records an answer carries for the tasks ``asked`` about; anything else in it is ignored.

    :raises DeliveriesUnavailableError: when the answer is not the endpoint's.
    """
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = None
    delivered = payload.get("delivered") if isinstance(payload, dict) else None
    if not isinstance(delivered, dict):
        raise DeliveriesUnavailableError("its answer is not a JSON object of delivered tasks")
    records = {}
    for task_id, record in delivered.items():
        if task_id not in asked or not isinstance(record, str):
            continue
        try:
            parsed = TaskRecord.model_validate_json(record)
        except ValueError:
            log.warning("The api-server's record of Apikley task %s cannot be read; its wait asks Apikley", task_id)
            continue
        if parsed.task_id == task_id and parsed.state.is_terminal:
            records[task_id] = parsed
    return records


_watches: dict[tuple[asyncio.AbstractEventLoop, str], DeliveryWatch] = {}


def delivery_watch(apikley_conn_id: str) -> DeliveryWatch:
    """Return the running event loop's watch for ``apikley_conn_id``."""
    key = (asyncio.get_running_loop(), apikley_conn_id)
    watch = _watches.get(key)
    if watch is None:
        for stale in [other for other in _watches if other[0].is_closed()]:
            del _watches[stale]
        watch = _watches[key] = DeliveryWatch(apikley_conn_id)
    return watch
