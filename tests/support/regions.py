"""Two S3 server processes as two regions: clients, listings and a two-target policy."""

from __future__ import annotations

import uuid

import boto3

from tests.support import MotoServer


def s3_client(server: MotoServer):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def bucket_keys(server: MotoServer, bucket: str) -> dict[str, int]:
    out = {}
    for page in s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def two_region_policy(tmp_path, east: MotoServer, west: MotoServer, quorum: int | str = 1,
                      extra: str = "") -> tuple:
    """A policy with two targets (fresh buckets); returns (path, east bucket, west bucket)."""
    eb, wb = f"east-{uuid.uuid4().hex[:8]}", f"west-{uuid.uuid4().hex[:8]}"
    east.create_bucket(eb)
    west.create_bucket(wb)
    q = f"write_quorum = {quorum}\n" if quorum != "all" else ""
    text = f"""
[storage]
{q}stall_timeout = 3

[[storage.targets]]
name = "east"
url = "s3://{eb}/repo"
endpoint_url = "{east.endpoint}"
region = "us-east-1"
connect_timeout = 2
read_timeout = 4
max_attempts = 1

[[storage.targets]]
name = "west"
url = "s3://{wb}/repo"
endpoint_url = "{west.endpoint}"
region = "us-west-2"
connect_timeout = 2
read_timeout = 4
max_attempts = 1
{extra}
"""
    p = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.toml"
    p.write_text(text)
    return p, eb, wb
