"""What an error may quote of a URL or a setting: a URL without its credentials, a setting only when a number."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.redaction import shown_setting, url_passwords, without_credentials


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:s3cret@proxy:3128", "http://***@proxy:3128"),
        ("https://user:p@ss/w#rd?@api.test/v1", "https://***@api.test/v1"),  # unencoded @ / # ? hidden whole
        ("ftp://:s3cret@files.test", "ftp://***@files.test"),
        ("https://api.test/v1?taskId=1", "https://api.test/v1?taskId=1"),  # no credentials, unchanged
        (
            "407, message='Proxy Authentication Required', url='http://u:s3cret@127.0.0.1:3128'; then http://u:s3@x",
            "407, message='Proxy Authentication Required', url='http://***@127.0.0.1:3128'; then http://***@x",
        ),
    ],
)
def test_every_url_in_a_text_loses_its_credentials_and_nothing_else(text, shown):
    assert without_credentials(text) == shown


@pytest.mark.parametrize(
    ("url", "passwords"),
    [
        ("http://user:s3cret@proxy:3128", {"s3cret"}),
        ("http://user:p%40ss@proxy:3128", {"p%40ss", "p@ss"}),  # as written, and as the client sends it
        ("user:s3cret@proxy:3128", {"s3cret"}),  # a proxy written without a scheme
        ("http://user@proxy:3128", set()),
        ("https://api.apikley.ru", set()),
    ],
)
def test_the_passwords_to_mask_are_those_of_the_url(url, passwords):
    assert url_passwords(url) == passwords


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-5, "timeout=-5"),
        ("-5", "timeout='-5'"),
        (None, "timeout=None"),
        ("sk-a-key-pasted-here", "timeout (a text, not shown)"),
        ({"key": "sk-a-key"}, "timeout (a dict, not shown)"),
    ],
)
def test_a_setting_is_quoted_only_when_it_is_a_number(value, shown):
    assert shown_setting("timeout", value) == shown
