"""
Exceptions raised by the Apikley provider.

Every error code of the Apikley envelope maps to one subclass of :class:`ApikleyError`, so a DAG
author (or an ``on_failure_callback``) can tell "out of credits" from "rate limited" without
parsing messages. None of them ever carries the API key.
"""

from __future__ import annotations

from typing import Self

from airflow.providers.common.compat.sdk import AirflowException


class ApikleyError(AirflowException):
    """
    Base class of every error that comes from Apikley or from talking to it.

    :param message: what went wrong, for a person.
    :param code: the envelope's ``code`` (or the HTTP status when the body had none).
    :param http_status: the HTTP status of the answer, when there was one.
    :param retry_after: seconds the service asked us to wait (``Retry-After``), if any.
    """

    #: Whether repeating the same read may succeed; decides retries of status queries.
    transient: bool = False
    #: Whether Apikley's JSON envelope said so (its ``code``), rather than an HTTP status alone, an
    #: answer of another shape or a failed connection: any host can answer HTTP 404, only an API
    #: that speaks Apikley's envelope can say that it knows no such task.
    from_envelope: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after

    def with_advice(self, advice: str) -> Self:
        """
        Add ``advice`` (what to do next) to the error's message, and return the error.

        The advice goes into the message rather than a note (``add_note``): Airflow's log view,
        a trigger's error event and ``str(context["exception"])`` in a callback show only the message.
        """
        separator = " " if str(self).endswith((".", ":", ")")) else ". "
        self.message = f"{self}{separator}{advice}"
        self.args = (self.message,)
        return self


class ApikleyAuthError(ApikleyError):
    """The API key is missing or was refused (401)."""


class ApikleyInsufficientCreditsError(ApikleyError):
    """The account has not enough credits for the task (402)."""


class ApikleyNotFoundError(ApikleyError):
    """The endpoint or the task does not exist (404, or 422 ``recordInfo is null``)."""


class ApikleyUpstreamTimeoutError(ApikleyError):
    """The model stayed silent for over ten minutes; the task failed (408)."""


class ApikleyValidationError(ApikleyError):
    """The service rejected the request's parameters (422)."""


class ApikleyRateLimitError(ApikleyError):
    """Too many requests (429). The service dropped the request, so repeating it is safe."""

    transient = True


class ApikleySubKeyLimitError(ApikleyError):
    """The sub-key's usage cap was reached (433)."""


class ApikleyMaintenanceError(ApikleyError):
    """The service is under maintenance (455)."""

    transient = True


class ApikleyServerError(ApikleyError):
    """The service failed on its side (500 and other 5xx)."""

    transient = True


class ApikleyGenerationFailedError(ApikleyError):
    """The generation failed (501)."""


class ApikleyFeatureDisabledError(ApikleyError):
    """The feature is disabled for this account (505)."""


class ApikleyBadResponseError(ApikleyError):
    """The answer was not the JSON envelope Apikley documents (an HTML error page, say)."""

    transient = True


class ApikleyURLRefusedError(ApikleyError):
    """
    A URL from outside (a result URL, or a redirect from one) points where the provider never goes.

    That is a scheme other than http(s), a link-local or cloud-metadata address, or a loopback or
    private host the connection does not allow. Not retried: the same URL is refused again.
    """


class ApikleyResultExistsError(ApikleyError):
    """
    A file of another content already has a result's name in ``output_path``.

    It is never overwritten. Not retried: the same name is refused again.
    """


class ApikleyConnectionError(ApikleyError):
    """
    The connection to Apikley could not be made, or broke before an answer arrived.

    :param request_not_sent: ``True`` when the connection never opened, so the service surely
        did not receive the request and repeating a ``createTask`` cannot create a second task.
    """

    transient = True

    def __init__(self, message: str, *, request_not_sent: bool) -> None:
        super().__init__(message)
        self.request_not_sent = request_not_sent


class ApikleyConfigurationError(ApikleyError):
    """The connection or configuration is unusable: no API key, a base URL not a URL, a bad ``[apikley]`` option."""


class ApikleyInputError(ApikleyError, ValueError):
    """A request was refused before it was sent: a field broke one of the model's rules."""


class ApikleyTaskFailedError(ApikleyError):
    """
    An Apikley task ended in state ``fail``.

    :param apikley_task_id: the id of the failed task.
    :param fail_code: Apikley's ``failCode``.
    :param fail_message: Apikley's ``failMsg``.
    :param credits_consumed: what Apikley charged for the failed task, when it said (a failed edit
        may still cost credits); the message then ends with ``N credits charged``.
    """

    def __init__(
        self,
        apikley_task_id: str,
        fail_code: str | None,
        fail_message: str | None,
        credits_consumed: float | None = None,
    ) -> None:
        message = f"Apikley task {apikley_task_id} failed: failCode={fail_code or '-'}, failMsg={fail_message or '-'}"
        if credits_consumed is not None:
            message += f"; {credits_consumed:g} credits charged"
        super().__init__(message)
        self.apikley_task_id = apikley_task_id
        self.fail_code = fail_code
        self.fail_message = fail_message
        self.credits_consumed = credits_consumed


class ApikleyTaskTimeoutError(ApikleyError):
    """An Apikley task did not finish before the wait's deadline."""


class ApikleyUnreadableStateError(ApikleyError):
    """
    What an earlier try saved in the task state store cannot be read.

    The message names the key and what is wrong with its value. Nothing is submitted: reading it as
    "no earlier task" could pay a second time for a task that exists.
    """


class ApikleyOrphanedIntentError(ApikleyError):
    """
    An earlier try began a paid ``createTask`` and saved no task id, and ``on_orphaned_intent="fail"``.

    Apikley may have created (and charged for) a task that no one can look up: its API has no
    idempotency key and no listing of tasks. The message says when the earlier try began and how
    to go on.
    """


class ApikleyBudgetExceededError(ApikleyError):
    """
    An edit was refused before it was paid for: it would take a spend budget past its limit.

    The message names the budget (the task's ``max_credits`` or the run's ``run_max_credits``), its
    limit, what was spent, what is in flight (reserved by edits not yet ended) and what the edit is
    expected to cost.
    """


class ApikleyBudgetUnavailableError(ApikleyError):
    """
    A run budget is set and its ledger on the api-server could not be reached, or refused the request.

    The edit is refused before it is paid for (a budget that cannot be checked does not hold); the
    message says what failed and where the ledger was looked for.
    """


ERROR_BY_CODE: dict[int, type[ApikleyError]] = {
    401: ApikleyAuthError,
    402: ApikleyInsufficientCreditsError,
    404: ApikleyNotFoundError,
    408: ApikleyUpstreamTimeoutError,
    422: ApikleyValidationError,
    429: ApikleyRateLimitError,
    433: ApikleySubKeyLimitError,
    455: ApikleyMaintenanceError,
    500: ApikleyServerError,
    501: ApikleyGenerationFailedError,
    505: ApikleyFeatureDisabledError,
}


def error_class_for_code(code: int) -> type[ApikleyError]:
    """Return the exception class for an Apikley envelope code (or HTTP status)."""
    if code in ERROR_BY_CODE:
        return ERROR_BY_CODE[code]
    if code >= 500:
        return ApikleyServerError
    return ApikleyError
