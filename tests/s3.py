"""
A real S3 API for tests: moto's standalone server on loopback, speaking the S3 wire protocol over HTTP.

:func:`s3` (a pytest fixture, imported by ``tests/conftest.py``) starts one server for the whole
run, the first time a test asks, and gives each test a fresh bucket, with AWS's own variables and
``aws_default`` pointing at the server, so ``output_path="s3://<bucket>/..."`` goes through
Airflow's ObjectStoragePath, s3fs and botocore exactly as on AWS.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

#: Credentials moto accepts while it checks none.
ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"


@dataclass
class S3Server:
    """The running server and a client of it."""

    endpoint_url: str

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
        )

    def connection(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> str:
        """An ``aws`` connection to this server, as JSON for ``AIRFLOW_CONN_<ID>``."""
        extra = {"endpoint_url": self.endpoint_url, "region_name": REGION}
        return json.dumps({"conn_type": "aws", "login": access_key, "password": secret_key, "extra": extra})

    def environment(self) -> dict[str, str]:
        """AWS's own variables for this server, which boto3 and s3fs read when no connection is named."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def enforce_iam(self, enforced: bool) -> None:
        """From now on check every request's credentials and IAM policies (moto does not by default)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0" if enforced else b"inf", timeout=10)


@dataclass
class Bucket:
    """A fresh bucket of the shared server, and ``aws_default`` pointing at the server."""

    server: S3Server
    name: str

    def uri(self, path: str = "") -> str:
        return f"s3://{self.name}/{path}".rstrip("/")

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket, by key."""
        client = self.server.client()
        listed = client.list_objects_v2(Bucket=self.name).get("Contents", [])
        return {item["Key"]: client.get_object(Bucket=self.name, Key=item["Key"])["Body"].read() for item in listed}

    def unfinished_uploads(self) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        uploads = self.server.client().list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return [upload["Key"] for upload in uploads]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A fresh bucket on the shared moto server, with ``aws_default`` pointing at the server."""
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    # ``s3://bucket/...`` reads AWS's own settings (as on an instance with a role); ``s3://conn@bucket``
    # reads that Airflow connection
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", s3_server.connection())
    yield Bucket(s3_server, name)
    s3_server.enforce_iam(False)
