"""
Results on S3, through a real S3 API (moto's server on loopback): every path that writes results,
what a failure leaves behind, an object already there, and a role that may not delete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from types import SimpleNamespace
from unittest import mock

import pytest
import requests

from airflow.providers.common.compat.sdk import ObjectStoragePath
from airflow.triggers.base import TaskSuccessEvent

from airflow_provider_qwen.exceptions import ApikleyInputError, ApikleyResultExistsError
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from airflow_provider_qwen.storage import OBJECT_STORE_PART_BYTES, write_atomically
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import recording_xcom_set, submit_edit

RESULT_URL = "https://files.example.org/out/a.png"


def stored_as_read_back(bucket, stored: list[dict]) -> dict[str, bytes]:
    """The objects ``stored`` names, read back from the bucket, each checked against its size and sha256."""
    objects = bucket.objects()
    found = {}
    for item in stored:
        key = item["uri"].split(f"{bucket.name}/", 1)[1]  # s3://[connection@]bucket/key
        data = objects[key]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (item["size"], item["sha256"]), item
        found[key] = data
    return found


def test_an_edit_stores_its_results_in_s3_byte_for_byte(apikley, source_image_url, s3):
    result = QwenImageToImageOperator(
        task_id="edit", prompt="sepia", image_url=source_image_url, output_path=s3.uri("edits"), poll_interval=0.01
    ).execute({"ti": mock.Mock()})
    (stored,) = result["stored"]
    assert stored["uri"] == s3.uri("edits/shoe.png")  # named after its source
    downloaded = requests.get(result["result_urls"][0], timeout=10).content
    assert stored_as_read_back(s3, result["stored"]) == {"edits/shoe.png": downloaded}
    # nothing else: no write-check probe, no temporary object, no unfinished upload
    assert list(s3.objects()) == ["edits/shoe.png"]
    assert s3.unfinished_uploads() == []


async def test_an_edit_ended_in_the_triggerer_stores_its_results_in_s3(apikley, source_image_url, s3, monkeypatch):
    pushed = []
    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", recording_xcom_set(pushed))
    task_id = apikley.wait_until_ended(submit_edit(source_image_url)).task_id
    trigger = ApikleyTaskTrigger(task_id, poll_interval=0.01, end_task_on_success=True, output_path=s3.uri("ends"))
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="edit", run_id="r", map_index=-1)
    (event,) = [event async for event in trigger.run()]
    assert isinstance(event, TaskSuccessEvent)
    (value,) = [push["value"] for push in pushed if push["key"] == "return_value"]
    assert list(stored_as_read_back(s3, value["stored"])) == [f"ends/{task_id}-0.png"]


@pytest.mark.parametrize("deferred", [False, True], ids=["poking", "resumed"])
def test_the_sensor_stores_the_results_it_waited_for_in_s3(apikley, source_image_url, s3, deferred):
    task_id = apikley.wait_until_ended(submit_edit(source_image_url)).task_id
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id=task_id, output_path=s3.uri("waited"), poke_interval=0)
    if deferred:
        task = apikley.state.tasks[task_id]  # the sensor's trigger sends the task's input with its results
        event = {"status": "success", "apikley_task_id": task_id, "result_urls": task.result_urls}
        result = sensor.execute_complete({"ti": mock.Mock()}, {**event, "input": task.request["input"]})
    else:
        result = sensor.execute({"ti": mock.Mock()})
    assert list(stored_as_read_back(s3, result["stored"])) == ["waited/shoe.png"]  # after its source


def test_a_batch_stores_every_result_in_s3(apikley, source_image_url, s3):
    inputs = [{"prompt": "sepia", "image_url": source_image_url, "seed": seed} for seed in range(3)]
    task_ids = [apikley.wait_until_ended(submit_edit(source_image_url, seed=seed)).task_id for seed in range(3)]
    batch = QwenImageToImageBatchOperator(task_id="batch", inputs=inputs, output_path=s3.uri("batch"))
    event = {
        "status": "done",
        "tasks": [
            {"status": "success", "apikley_task_id": task_id, "result_urls": apikley.state.tasks[task_id].result_urls}
            for task_id in task_ids
        ],
    }
    results = batch.execute_complete({"ti": mock.Mock()}, event)
    stored = [item for result in results for item in result["stored"]]
    assert sorted(stored_as_read_back(s3, stored)) == [f"batch/shoe-{index}.png" for index in range(3)]


def large_png(size: int) -> bytes:
    """``size`` bytes that start as a PNG does (all the copy checks of an image)."""
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


def test_a_large_result_is_one_multipart_upload_in_parts_of_bounded_size(s3, monkeypatch):
    from s3fs import S3FileSystem

    data = large_png(2 * OBJECT_STORE_PART_BYTES + 1024)
    calls = []
    real_call = S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append((method, len(kwargs.get("Body") or b"")))
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_call_s3", counting)
    dest = ObjectStoragePath(s3.uri("big/t-0.png"))
    stored = write_atomically(chunks(data), dest, source_url=RESULT_URL, max_bytes=len(data))
    assert s3.objects() == {"big/t-0.png": data} and stored.sha256 == hashlib.sha256(data).hexdigest()
    writes = [(method, size) for method, size in calls if method != "head_object"]
    assert [method for method, _ in writes] == [
        "create_multipart_upload",
        "upload_part",
        "upload_part",
        "upload_part",
        "complete_multipart_upload",
    ]
    assert max(size for _, size in writes) == OBJECT_STORE_PART_BYTES  # memory per copy: one part


def test_a_small_result_is_one_put(s3, monkeypatch):
    from s3fs import S3FileSystem

    calls = []
    real_call = S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append(method)
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_call_s3", counting)
    write_atomically(iter([large_png(4096)]), ObjectStoragePath(s3.uri("small/t-0.png")), source_url=RESULT_URL)
    assert calls == ["put_object"]  # no temporary object, no copy, no delete


def test_an_upload_that_fails_midway_leaves_no_object_and_no_unfinished_upload(s3, monkeypatch):
    from s3fs import S3FileSystem

    real_call = S3FileSystem._call_s3
    parts = []

    async def failing_second_part(self, method, *args, **kwargs):
        if method == "upload_part":
            parts.append(kwargs["PartNumber"])
            if len(parts) == 2:
                raise ConnectionResetError("connection reset by peer")
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_call_s3", failing_second_part)
    data = large_png(2 * OBJECT_STORE_PART_BYTES + 1024)
    with pytest.raises(OSError):
        write_atomically(chunks(data), ObjectStoragePath(s3.uri("big/t-0.png")), source_url=RESULT_URL)
    assert s3.objects() == {} and s3.unfinished_uploads() == []


def test_a_download_that_fails_midway_writes_nothing_at_all(s3):
    def broken():
        yield large_png(1024)
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(ConnectionResetError):
        write_atomically(broken(), ObjectStoragePath(s3.uri("a/t-0.png")), source_url=RESULT_URL)
    assert s3.objects() == {} and s3.unfinished_uploads() == []


def test_an_object_with_other_bytes_is_never_overwritten_and_the_same_bytes_are_kept(s3):
    dest = ObjectStoragePath(s3.uri("a/t-0.png"))
    first = write_atomically(iter([large_png(512)]), dest, source_url=RESULT_URL)
    again = write_atomically(iter([dest.read_bytes()]), dest, source_url=RESULT_URL)  # a retry copying again
    assert again == first
    with pytest.raises(ApikleyResultExistsError, match="already exists with other content"):
        write_atomically(iter([large_png(512)]), dest, source_url=RESULT_URL)
    assert hashlib.sha256(s3.objects()["a/t-0.png"]).hexdigest() == first.sha256


# ---- IAM: what the provider needs on a bucket, and a role that may not delete ------------------------

#: What the docs' minimal policy grants on the results' prefix.
WRITER_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]


def iam_user(s3, name: str, statements: list[dict]) -> tuple[str, str]:
    """A moto IAM user with ``statements`` as its policy; its access key and secret."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=s3.server.endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    iam.create_user(UserName=name)
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    iam.put_user_policy(UserName=name, PolicyName="results", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_a_role_without_delete_rights_stores_its_results(apikley, source_image_url, s3, monkeypatch):
    resources = [f"arn:aws:s3:::{s3.name}/*"]
    key, secret = iam_user(
        s3,
        f"writer-{s3.name}",
        [
            {"Effect": "Allow", "Action": WRITER_ACTIONS, "Resource": resources},
            {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": resources},
        ],
    )
    monkeypatch.setenv("AIRFLOW_CONN_S3_WRITER", s3.server.connection(key, secret))
    s3.server.enforce_iam(True)
    with pytest.raises(Exception, match="AccessDenied"):  # the role really may not delete
        s3.server.client(key, secret).delete_object(Bucket=s3.name, Key="anything")
    result = QwenImageToImageOperator(
        task_id="edit",
        prompt="sepia",
        image_url=source_image_url,
        output_path=f"s3://s3_writer@{s3.name}/edits",
        poll_interval=0.01,
    ).execute({"ti": mock.Mock()})
    s3.server.enforce_iam(False)
    assert list(stored_as_read_back(s3, result["stored"])) == ["edits/shoe.png"]
    assert list(s3.objects()) == ["edits/shoe.png"]


def test_a_role_that_may_not_write_is_refused_before_paying(apikley, source_image_url, s3, monkeypatch):
    key, secret = iam_user(s3, f"reader-{s3.name}", [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}])
    monkeypatch.setenv("AIRFLOW_CONN_S3_READER", s3.server.connection(key, secret))
    s3.server.enforce_iam(True)
    with pytest.raises(ApikleyInputError, match="it needs s3:PutObject and s3:AbortMultipartUpload"):
        QwenImageToImageOperator(
            task_id="edit", prompt="sepia", image_url=source_image_url, output_path=f"s3://s3_reader@{s3.name}/edits"
        ).execute({"ti": mock.Mock()})
    s3.server.enforce_iam(False)
    assert apikley.seen("createTask") == []


def chunks(data: bytes, size: int = 1024 * 1024):
    stream = io.BytesIO(data)
    while block := stream.read(size):
        yield block


# ---- the docs' S3 section ------------------------------------------------------------------------------


def test_the_docs_s3_snippet_stores_results_in_the_bucket_it_names(apikley, source_image_url, s3):
    from airflow.providers.common.compat.sdk import DAG

    from tests.docs import snippets

    (snippet,) = [snippet for snippet in snippets("python") if 'output_path="s3://my-bucket/edits",\n)' in snippet.code]
    try:
        s3.server.client().create_bucket(Bucket="my-bucket")
    except Exception as err:  # made by an earlier run of this test in this session
        assert "BucketAlreadyOwnedByYou" in str(err), err
    with DAG("readme_s3", schedule=None) as dag:
        exec(compile(snippet.code, str(snippet), "exec"), {})
    edit = dag.get_task("edit")
    edit.image_url = source_image_url  # the emulator's copy of the snippet's source image
    result = edit.execute({"ti": mock.Mock()})
    (stored,) = result["stored"]
    key = stored["uri"].removeprefix("s3://my-bucket/")
    # an earlier run in this session may have left another edit's shoe.png: never written over
    assert key in ("edits/shoe.png", f"edits/shoe-{result['apikley_task_id']}.png")
    data = s3.server.client().get_object(Bucket="my-bucket", Key=key)["Body"].read()
    assert stored["uri"] == f"s3://my-bucket/{key}" and hashlib.sha256(data).hexdigest() == stored["sha256"]


def test_the_docs_iam_policy_grants_what_the_delete_denied_role_had():
    from tests.docs import snippets

    (policy,) = [json.loads(snippet.code) for snippet in snippets("json") if "s3:PutObject" in snippet.code]
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow" and sorted(statement["Action"]) == sorted(WRITER_ACTIONS)
    assert "s3:DeleteObject" not in json.dumps(policy)
