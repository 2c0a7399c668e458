"""The one place that speaks HTTP to Apikley, blocking (workers) and async (triggers)."""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import aiohttp
import requests
import yarl
from urllib3.exceptions import ConnectTimeoutError

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import ObjectStoragePath
from airflow.providers.http.hooks.http import HttpHook

from airflow_provider_qwen import results
from airflow_provider_qwen.connection_form import DEFAULT_BASE_URL, UI_FIELD_BEHAVIOUR
from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyBadResponseError,
    ApikleyConnectionError,
    ApikleyError,
    ApikleyNotFoundError,
    error_class_for_code,
)
from airflow_provider_qwen.hooks import CREDIT_ENDPOINT, DEFAULT_CONN_ID, USER_AGENT, preflight
from airflow_provider_qwen.hooks.connection import ApikleySettings, BearerAuth, connection_source
from airflow_provider_qwen.hooks.deadline import CallDeadline, DeadlineAdapter, wall_clock_limit
from airflow_provider_qwen.hooks.downloads import ResultHostPolicy, download_session, open_result
from airflow_provider_qwen.hooks.envelope import check_answer_size, excerpt, parse_envelope
from airflow_provider_qwen.hooks.retries import RetryPolicy, is_transient, was_not_taken
from airflow_provider_qwen.hooks.sessions import proxy_options, shared_sessions
from airflow_provider_qwen.hooks.uploads import (
    DEFAULT_UPLOAD_STEM,
    EXTENSIONS,
    UNIQUE_SUFFIX_CHARS,
    content_suffix,
    name_in_url,
    unique_name,
    upload_fields,
)
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.names import check_file_name
from airflow_provider_qwen.redaction import without_credentials
from airflow_provider_qwen.storage import (
    MAX_RESULT_BYTES,
    StoredFile,
    as_folder,
    check_result_url,
    check_upload,
    read_upload,
    write_atomically,
)
from airflow_provider_qwen.threads import in_thread
from airflow_provider_qwen.validation import check_task_id, is_task_id

CREATE_TASK_ENDPOINT = "/api/v1/jobs/createTask"
RECORD_INFO_ENDPOINT = "/api/v1/jobs/recordInfo"
DOWNLOAD_CHUNK_BYTES = 64 * 1024


def _connection_error(err: requests.RequestException) -> ApikleyConnectionError:
    reason = getattr(err.args[0], "reason", None) if err.args else None
    not_sent = isinstance(err, requests.ConnectTimeout) or isinstance(reason, ConnectTimeoutError)
    return ApikleyConnectionError(
        f"Could not reach Apikley: {type(err).__name__}: {without_credentials(str(err))}", request_not_sent=not_sent
    )


#: Whether a failed call may be repeated: :func:`is_transient` for reads, :func:`was_not_taken` for creates.
Retry = Callable[[BaseException], bool]


def _deadline_passed(seconds: float) -> ApikleyConnectionError:
    return ApikleyConnectionError(f"No complete answer within {seconds:g} s; abandoned", request_not_sent=False)


def _task_id_from_create_answer(data: Any) -> str:
    task_id = data.get("taskId") or data.get("task_id") if isinstance(data, dict) else None
    if not is_task_id(task_id):
        raise ApikleyBadResponseError(
            f"Apikley accepted the task but sent no usable taskId: {excerpt(repr(data))}; "
            "look for the task in Apikley's logs before submitting it again"
        )
    return task_id


class ApikleyHook(HttpHook):
    """
    Talk to the Apikley API: create tasks, read their state, check credits.

    The connection must be of type ``apikley``; it holds the API key in its password and, optionally,
    the base URL in its host (default https://api.apikley.ru). Its extra may set ``timeout`` (seconds
    one call may take in all), ``upload_base_url``, ``webhook_secret``, ``proxies``, ``verify`` and
    ``private_result_hosts``; other extras are never sent, and are ignored with a warning, or refused
    when the extra ``strict_extras`` is true (see :class:`ApikleySettings`).

    Status queries are retried on 429, 455, 5xx, malformed answers and network errors, with
    exponential backoff, jitter and ``Retry-After``. ``createTask`` is retried only where the service
    surely did not take the request (429, or a connection that never opened), so a retry never
    creates a second paid task.

    :param apikley_conn_id: the Airflow connection to use.
    :param retry_policy: how often and how patiently to repeat a failed call.
    :param timeout: seconds one HTTP call may take in all; overrides the connection's ``timeout``.
    """

    conn_name_attr = "apikley_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "apikley"
    hook_name = "Apikley"
    default_host = DEFAULT_BASE_URL
    default_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}

    def __init__(
        self,
        apikley_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        # HttpHook would build its keep-alive adapter (a connection pool) now, for every hook; a
        # trigger's hook never sends a blocking request, so get_conn builds one on first use instead.
        super().__init__(method="GET", http_conn_id=apikley_conn_id, tcp_keep_alive=False)
        self.apikley_conn_id = apikley_conn_id
        self.retry_policy = retry_policy or RetryPolicy()
        self._timeout_override = timeout
        self._aio_session: aiohttp.ClientSession | None = None
        self._aio_base_url = ""
        self._aio_options: dict[str, Any] = {}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form's labels; Airflow 3.2+ reads them from the provider info instead."""
        return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}

    # ---- blocking client (workers) -----------------------------------------------------------

    @cached_property
    def settings(self) -> ApikleySettings:
        """
        What this hook takes from its connection, read once.

        :raises ApikleyConfigurationError: when the connection is not of type ``apikley``, has no API
            key or holds an extra that breaks its rule.
        """
        return ApikleySettings.from_connection(self.get_connection(self.apikley_conn_id))

    @property
    def timeout(self) -> float:
        """Seconds one HTTP call may take in all, answer included."""
        return self._timeout_override or self.settings.timeout

    def get_conn(
        self, headers: dict[str, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """
        Return a ``requests`` session for the API.

        It sends the key as a bearer token, with the connection's ``proxies`` and ``verify``, TCP
        keep-alive and a wall-clock limit per call. No other extra is used.
        """
        settings = self.settings
        self.base_url = settings.base_url
        session = requests.Session()
        session.auth = BearerAuth(settings.api_key)
        session.headers.update({**self.default_headers, **(headers or {})})
        session.proxies.update(settings.proxies)
        session.verify = settings.client_verify()
        session.stream = True  # answers are read in chunks, so an oversized one is refused early
        adapter = DeadlineAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @cached_property
    def session(self) -> requests.Session:
        """One ``requests`` session, configured from the connection, reused by every call."""
        return self.get_conn()

    @property
    def upload_base_url(self) -> str:
        """
        Base URL of the file upload API.

        That is the connection's ``upload_base_url`` extra, else its base URL followed by
        ``/file-upload`` (https://api.apikley.ru/file-upload when the host is empty).
        """
        return self.settings.upload_base_url

    def _send(self, method: str, url: str, **request_kwargs: Any) -> Any:
        session = self.session
        # Redirects are not followed: the key must not travel to wherever an answer points.
        options = {"timeout": self.timeout, "allow_redirects": False, "check_response": False}
        prepared = session.prepare_request(requests.Request(method, url, **request_kwargs))
        with wall_clock_limit(self.timeout) as deadline:
            try:
                with self.run_and_check(session, prepared, options) as response:
                    body = b""
                    for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                        body += chunk
                        check_answer_size(len(body))
            except requests.RequestException as err:
                raise (_deadline_passed(self.timeout) if deadline.expired else _connection_error(err)) from None
            if deadline.expired:  # an answer without a length ends early, at the shutdown
                raise _deadline_passed(self.timeout)
        return self._read_answer(response.status_code, body, response.encoding, response.headers.get("Retry-After"))

    def _read_answer(self, http_status: int, body: bytes, charset: str | None, retry_after: str | None) -> Any:
        """Return an answer's ``data``; a refused key's error says which connection to fix, and where."""
        try:
            return parse_envelope(http_status, body, charset, retry_after)
        except ApikleyAuthError as err:
            conn_id = self.apikley_conn_id
            source = connection_source(conn_id)
            raise err.with_advice(
                f"Check the API key (password) of connection {conn_id!r}, read from {source}."
            ) from None

    def _call(
        self, method: str, endpoint: str, should_retry: Retry, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> Any:
        """Call an API endpoint (or an absolute URL, for uploads) with retries; return ``data``."""
        url = endpoint if "://" in endpoint else self.settings.base_url + endpoint
        return (policy or self.retry_policy).call(should_retry, self.log, self._send, method, url, **kwargs)

    def create_task(self, model: str, input: dict[str, Any], callback_url: str | None = None) -> str:
        """
        Create an Apikley task and return its id. The task runs on; poll it with :meth:`get_task`.

        :param model: the model, e.g. ``qwen/image-to-image``.
        :param input: the model's input, already validated.
        :param callback_url: where Apikley POSTs the task's details when it ends.
        :return: the Apikley task id.
        """
        body: dict[str, Any] = {"model": model, "input": input}
        if callback_url:
            body["callBackUrl"] = callback_url
        data = self._call("POST", CREATE_TASK_ENDPOINT, was_not_taken, json=body)
        return _task_id_from_create_answer(data)

    def get_task(self, task_id: str, *, retry_policy: RetryPolicy | None = None) -> TaskRecord:
        """
        Read the state of an Apikley task.

        :param task_id: the id :meth:`create_task` returned.
        :param retry_policy: overrides the hook's for this call; a wait that counts failed queries
            itself asks with :data:`~airflow_provider_qwen.hooks.retries.ONE_TRY`.
        :raises ApikleyNotFoundError: when Apikley knows no such task.
        """
        task_id = check_task_id(task_id)
        try:
            data = self._call("GET", RECORD_INFO_ENDPOINT, is_transient, retry_policy, params={"taskId": task_id})
        except ApikleyNotFoundError as err:
            raise _unknown_task(task_id, err) from None
        return TaskRecord.from_api(data)

    def get_credits(self) -> float:
        """Return the account's remaining credits."""
        return _credits_in(self._call("GET", CREDIT_ENDPOINT, is_transient))

    def read_credits(
        self, http_status: int, body: bytes, charset: str | None = None, retry_after: str | None = None
    ) -> float:
        """
        Return the credits in an answer of Apikley's credit endpoint received elsewhere, as :meth:`get_credits` would.

        :raises ApikleyError: the error the answer describes, as :meth:`get_credits` raises it (a
            refused key names this hook's connection and where it is read from).
        """
        return _credits_in(self._read_answer(http_status, body, charset, retry_after))

    # ---- files -------------------------------------------------------------------------------

    def upload_file(
        self,
        file: str | os.PathLike | bytes,
        upload_path: str,
        file_name: str | None = None,
        *,
        overwrite: bool = False,
    ) -> str:
        """
        Upload a local image (a path, or its bytes) and return the URL to pass as ``image_url``.

        The file is checked first (a regular file, not a device, FIFO or folder; JPEG, PNG or WebP;
        at most 10 MB, and never read further than that): a bad one is refused before any request.
        ``upload_path`` and the name are checked too, after NFKC normalisation (see
        :mod:`~airflow_provider_qwen.names`), and sent normalised. Uploaded files are temporary on
        Apikley's side (assume 24 hours).

        Apikley stores an upload under ``<upload_path>/<name>`` and a second upload of the same name
        replaces the first, so the first URL would then serve the second image. By default the name
        is therefore made unique: ``shoe.png`` is stored as ``shoe-<16 hex digits>.png``, the digits
        being the start of the image's SHA-256 (64 bits: two different images of one name in one
        folder do not meet by chance). A hash rather than a random suffix because it names the
        content: different images never share a URL, while the same image uploaded again (a
        retried request, a retried Airflow task) gets the same name and URL, and rewriting a file
        with its own bytes is harmless; so a failed upload is safely repeated on transient errors.

        :param file: a path to the image, or its bytes.
        :param upload_path: the folder to upload into, without leading or trailing slash.
        :param file_name: the name to store it under (a plain name, no folder). By default the
            path's name, or ``image.<png|jpg|webp>`` for bytes.
        :param overwrite: store the image under exactly ``file_name``, replacing (and changing what
            the URL serves for) any earlier upload of that name in ``upload_path``; without a
            ``file_name``, Apikley picks the name. Off by default.
        :return: the uploaded file's ``downloadUrl``.
        :raises ApikleyInputError: when the image, ``upload_path`` or ``file_name`` is not valid.
        """
        if file_name is not None:
            file_name = check_file_name(file_name)
        if isinstance(file, bytes):
            content, name = file, file_name or DEFAULT_UPLOAD_STEM
        else:
            name = file_name or check_file_name(Path(file).name, field="file_name (the file's name)")
            content = read_upload(file)
        content_type = check_upload(content, name)
        if not overwrite:
            if not file_name and isinstance(file, bytes):
                name += EXTENSIONS[content_type]
            name = file_name = unique_name(name, content_suffix(content))
        return self._upload(
            "file-stream-upload",
            file_name,
            files={"file": (name, content, content_type)},
            data=upload_fields(upload_path, file_name),
        )

    def upload_base64(
        self, content: bytes, upload_path: str, file_name: str | None = None, *, overwrite: bool = False
    ) -> str:
        """
        Like :meth:`upload_file`, sent as base64 JSON; for images already in memory.

        Without ``overwrite`` the stored name is made unique from the image's SHA-256, as in
        :meth:`upload_file` (by default ``image-<16 hex digits>.<png|jpg|webp>``).
        """
        if file_name is not None:
            file_name = check_file_name(file_name)
        content_type = check_upload(content, file_name or DEFAULT_UPLOAD_STEM)
        if not overwrite:
            name = file_name or DEFAULT_UPLOAD_STEM + EXTENSIONS[content_type]
            file_name = unique_name(name, content_suffix(content))
        data_url = f"data:{content_type};base64,{base64.b64encode(content).decode()}"
        return self._upload(
            "file-base64-upload", file_name, json={"base64Data": data_url, **upload_fields(upload_path, file_name)}
        )

    def upload_from_url(
        self, file_url: str, upload_path: str, file_name: str | None = None, *, overwrite: bool = False
    ) -> str:
        """
        Have Apikley fetch an image from ``file_url`` (http or https) and return its ``downloadUrl``.

        Without ``overwrite`` the stored name is made unique with a random suffix, chosen once per
        call: ``file_name`` (by default the URL's last path segment, or ``image``) becomes
        ``<name>-<16 hex digits><extension>``. Not a hash as in :meth:`upload_file`: the bytes are
        fetched by Apikley, not seen here, and one URL may serve different images over time, so
        hashing the URL could let a later upload replace an earlier one. A repeat of the request
        after a transient error reuses the name and rewrites the same file from the same URL, so it
        is still safe.

        :param file_url: where Apikley fetches the image from.
        :param upload_path: the folder to upload into, without leading or trailing slash.
        :param file_name: the name to store it under (a plain name, no folder).
        :param overwrite: store under exactly ``file_name``, replacing any earlier upload of that
            name; without a ``file_name``, Apikley picks the name. Off by default.
        :return: the uploaded file's ``downloadUrl``.
        """
        if file_name is not None:
            file_name = check_file_name(file_name)
        file_url = check_result_url(file_url)
        if not overwrite:
            name = file_name or name_in_url(file_url) or DEFAULT_UPLOAD_STEM
            file_name = unique_name(name, secrets.token_hex(UNIQUE_SUFFIX_CHARS // 2))
        body = {"fileUrl": file_url, **upload_fields(upload_path, file_name)}
        return self._upload("file-url-upload", file_name, json=body)

    def _upload(self, api: str, file_name: str | None, **request_kwargs: Any) -> str:
        # A named upload (every one without overwrite: its name is fixed before the first try) can
        # only rewrite its own file with the same bytes, or from the same URL: repeating it is
        # harmless. An unnamed one might be stored twice under two names Apikley picks, so it is
        # repeated only when the service surely did not take it.
        should_retry = is_transient if file_name else was_not_taken
        data = self._call("POST", f"{self.upload_base_url}/api/{api}", should_retry, **request_kwargs)
        url = data.get("downloadUrl") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ApikleyBadResponseError(f"Apikley accepted the upload but sent no downloadUrl: {excerpt(repr(data))}")
        return url

    def download_result(
        self, url: str, dest: str | ObjectStoragePath, *, max_bytes: int = MAX_RESULT_BYTES
    ) -> StoredFile:
        """
        Copy a result image to ``dest`` (any :class:`ObjectStoragePath`), atomically.

        Result URLs are signed links that may live on another host, so nothing of the connection is
        sent with them. The URL and each redirect (at most three) are checked first: see
        :class:`~airflow_provider_qwen.hooks.downloads.ResultHostPolicy`.

        :param url: an http(s) result URL from :attr:`TaskRecord.result_urls`.
        :param dest: where to write it; its folder is created if needed.
        :param max_bytes: refuse results larger than this.
        :return: where it was written, with size, content type and SHA-256.
        :raises ApikleyURLRefusedError: when the URL or a redirect points where results may not be.
        """
        check_result_url(url)
        dest = as_folder(dest)
        return self.retry_policy.call(is_transient, self.log, self._download, url, dest, max_bytes)

    @cached_property
    def download_session(self) -> requests.Session:
        """The session for URLs outside Apikley's API (results, image checks): no key, the connection's proxies."""
        return download_session(USER_AGENT, self.settings.proxies, self.settings.client_verify())

    def check_image_urls(self, urls: Mapping[str, str]) -> None:
        """
        Refuse a task whose image URLs do not answer, before it is paid for.

        See :func:`~airflow_provider_qwen.hooks.preflight.check_image_urls`.

        :param urls: each URL by the field that names it.
        :raises ApikleyInputError: naming each dead URL's field, the URL and what it answered.
        """
        own_hosts = (self.settings.base_url, self.upload_base_url)
        preflight.check_image_urls(self.download_session, self.result_host_policy, urls, own_hosts)

    @cached_property
    def result_host_policy(self) -> ResultHostPolicy:
        """Which hosts result URLs may point to, for this connection."""
        return ResultHostPolicy.for_api(self.settings.base_url, self.settings.private_result_hosts)

    def store_results(
        self, apikley_task_id: str, result_urls: Sequence[str], folder: str | ObjectStoragePath, extension: str = "png"
    ) -> list[StoredFile]:
        """
        Copy every result of a task into ``folder``.

        .. deprecated:: 0.1.0
            Use :func:`airflow_provider_qwen.results.store_results` (``store_results(hook, ...)``);
            this method goes in the next release.
        """
        warnings.warn(
            "ApikleyHook.store_results moved to airflow_provider_qwen.results.store_results(hook, ...)",
            AirflowProviderDeprecationWarning,
            stacklevel=2,
        )
        return results.store_results(self, apikley_task_id, result_urls, folder, extension)

    def _download(self, url: str, dest: ObjectStoragePath, max_bytes: int) -> StoredFile:
        with wall_clock_limit(self.timeout) as deadline:
            try:
                with open_result(self.download_session, url, self.result_host_policy, self.timeout) as response:
                    if response.status_code != 200:
                        raise error_class_for_code(response.status_code)(
                            f"Downloading result {url} answered HTTP {response.status_code}",
                            code=response.status_code,
                            http_status=response.status_code,
                        )
                    stored = write_atomically(
                        _until_expired(response.iter_content(DOWNLOAD_CHUNK_BYTES), deadline),
                        dest,
                        source_url=url,
                        max_bytes=max_bytes,
                    )
            except requests.RequestException as err:
                raise (_deadline_passed(self.timeout) if deadline.expired else _connection_error(err)) from None
        return stored

    def test_connection(self) -> tuple[bool, str]:
        """Make one cheap authenticated call (the credit balance) and say how it went."""
        try:
            credits = self.get_credits()
        except ApikleyError as err:
            return False, str(err)
        return True, f"Connected to {without_credentials(self.base_url)}: {credits:g} credits left"

    # ---- async client (triggers) -------------------------------------------------------------

    async def asettings(self) -> ApikleySettings:
        """Read the connection's settings without blocking the event loop (a trigger's way to :attr:`settings`)."""
        conn = await get_async_connection(self.apikley_conn_id, self)
        extra = await get_async_extra_dejson(conn)
        # Off the event loop: reading the settings masks the secrets, which in a triggerer tells its
        # supervisor with a blocking send, and Airflow 3.2's blocks the loop it waits on for good.
        return await in_thread(ApikleySettings.from_connection, conn, extra)

    async def _open_aio(self) -> aiohttp.ClientSession:
        settings = await self.asettings()
        # The key alone authenticates, as in the blocking client (whose bearer auth overrides a
        # user:password in the host); aiohttp would refuse a request that carries both.
        self._aio_base_url = str(yarl.URL(settings.base_url, encoded=True).with_user(None))
        self._aio_options = {
            "headers": {**self.default_headers, "Authorization": f"Bearer {settings.api_key}"},
            "timeout": aiohttp.ClientTimeout(total=self._timeout_override or settings.timeout),
            **proxy_options(settings.proxies.get(settings.base_url.split("://", 1)[0])),
            "ssl": _ssl_option(settings.client_verify()),
            "allow_redirects": False,
        }
        if self._aio_session is None:  # queries started together all looked the connection up: borrow once
            self._aio_session = await shared_sessions.acquire(self.apikley_conn_id)
        return self._aio_session

    async def _asend(self, method: str, endpoint: str, **request_kwargs: Any) -> Any:
        session = self._aio_session or await self._open_aio()
        url = self._aio_base_url + endpoint
        try:
            async with session.request(method, url, **self._aio_options, **request_kwargs) as response:
                body = b""
                while chunk := await response.content.readany():
                    body += chunk
                    check_answer_size(len(body))
        except aiohttp.ClientConnectorError as err:
            message = f"Could not reach Apikley: {without_credentials(str(err))}"
            raise ApikleyConnectionError(message, request_not_sent=True) from None
        except (TimeoutError, aiohttp.ClientError) as err:
            raise ApikleyConnectionError(
                f"Connection to Apikley broke: {type(err).__name__}: {without_credentials(str(err))}",
                request_not_sent=False,
            ) from None
        return self._read_answer(response.status, body, response.charset, response.headers.get("Retry-After"))

    def _acall(
        self, method: str, endpoint: str, should_retry: Retry, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> Awaitable[Any]:
        return (policy or self.retry_policy).call(should_retry, self.log, self._asend, method, endpoint, **kwargs)

    async def aget_task(self, task_id: str, *, retry_policy: RetryPolicy | None = None) -> TaskRecord:
        """
        Read the state of an Apikley task without blocking the event loop.

        The connection is resolved once, asynchronously. Calls go through the aiohttp session that
        every hook of this connection in this event loop shares, until :meth:`aclose`.

        :param retry_policy: overrides the hook's for this call, as in :meth:`get_task`.
        """
        task_id = check_task_id(task_id)
        try:
            data = await self._acall(
                "GET", RECORD_INFO_ENDPOINT, is_transient, retry_policy, params={"taskId": task_id}
            )
        except ApikleyNotFoundError as err:
            raise _unknown_task(task_id, err) from None
        return TaskRecord.from_api(data)

    async def aclose(self) -> None:
        """Give back the shared async session, if this hook borrowed it; the last user closes it."""
        if self._aio_session is not None:
            self._aio_session = None
            await shared_sessions.release(self.apikley_conn_id)


def _credits_in(data: Any) -> float:
    try:
        return float(data)
    except (TypeError, ValueError):
        raise ApikleyBadResponseError(f"Apikley sent credits that are not a number: {data!r}") from None


def _until_expired(chunks: Iterable[bytes], deadline: CallDeadline) -> Iterator[bytes]:
    """Return the chunks, stopping with an error if the deadline passed: an answer cut off then is not complete."""
    yield from chunks
    if deadline.expired:
        raise _deadline_passed(deadline.seconds)


def _ssl_option(verify: bool | str) -> bool | ssl.SSLContext:
    """Aiohttp's ``ssl`` argument for the connection's ``verify`` extra."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return bool(verify)


def _unknown_task(task_id: str, err: ApikleyNotFoundError) -> ApikleyNotFoundError:
    unknown = ApikleyNotFoundError(
        f"Apikley does not know task {task_id}: it was never created with this connection's key, or it has expired",
        code=err.code,
        http_status=err.http_status,
    )
    unknown.from_envelope = err.from_envelope
    return unknown
