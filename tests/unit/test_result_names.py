"""What an edit's results are called: a source's name made into a file name, whatever the URL holds."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.results import DistinctNames, result_name, source_stem

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"


@pytest.mark.parametrize(
    ("image_url", "stem"),
    [
        ("https://files.example.org/in/shoe.png", "shoe"),
        ("https://files.example.org/in/Red%20Mug.jpeg?token=abc", "Red_Mug"),
        ("https://files.example.org/catalog/shoe-0123456789abcdef.png", "shoe"),  # the hook's upload suffix
        ("https://files.example.org/in/a%2F..%2Fb.png", "b"),  # an encoded path keeps only its last name
        ("https://files.example.org/in/%2E%2E", TASK_ID),  # '..' has nothing left once its dots go
        ("https://files.example.org/in/.hidden.png", "hidden"),
        ("https://files.example.org/in/a\uff0fb.png", "a_b"),  # FULLWIDTH SOLIDUS is '/' once NFKC-normalised
        ("https://files.example.org/in/evil%1b%5b2J.png", "evil_[2J"),
        ("https://files.example.org/", TASK_ID),
        ("https://files.example.org/in/" + "é" * 100 + ".png", "é" * 40),  # 80 bytes of whole characters
        (None, TASK_ID),
    ],
)
def test_a_sources_name_becomes_a_plain_part_of_a_file_name(image_url, stem):
    assert source_stem(image_url, TASK_ID) == stem


def test_the_default_name_is_the_stem_and_for_items_the_index_and_without_a_source_the_task_ids():
    url = "https://files.example.org/in/shoe.png"
    assert result_name(None, image_url=url, index=None, apikley_task_id=TASK_ID) == "shoe"
    assert result_name(None, image_url=url, index=4, apikley_task_id=TASK_ID) == "shoe-4"
    assert result_name(None, image_url=None, index=4, apikley_task_id=TASK_ID) is None  # <task id>-<n>
    assert result_name("{apikley_task_id}", image_url=url, index=None, apikley_task_id=TASK_ID) == TASK_ID


def test_repeated_names_get_the_lowest_free_suffix_in_order():
    names = DistinctNames()
    claimed = [names.claim(name) for name in ["shoe", "shoe", "shoe-2", "mug", "shoe", None]]
    assert claimed == ["shoe", "shoe-2", "shoe-2-2", "mug", "shoe-3", None]
