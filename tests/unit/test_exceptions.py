"""What an error says after advice is added to it: the same error, its message extended."""

from __future__ import annotations

from airflow_provider_qwen.exceptions import ApikleyInsufficientCreditsError, ApikleyRateLimitError


def test_advice_extends_the_message_and_keeps_the_class_and_the_details():
    error = ApikleyRateLimitError("Too many requests", code=429, http_status=429, retry_after=2.5)
    advised = error.with_advice("Lower creates_per_window.")
    assert advised is error
    assert type(advised) is ApikleyRateLimitError and advised.transient
    assert str(advised) == advised.message == "Too many requests. Lower creates_per_window."
    assert (advised.code, advised.http_status, advised.retry_after) == (429, 429, 2.5)


def test_advice_after_a_sentence_is_a_new_sentence():
    error = ApikleyInsufficientCreditsError("Not enough credits.", code=402)
    assert str(error.with_advice("Top up the account.")) == "Not enough credits. Top up the account."
