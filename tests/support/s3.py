"""Put, get and list objects of the S3-compatible server the tests start.

    s3.py put LOCAL_DIR s3://BUCKET/PREFIX   upload a folder (makes the bucket)
    s3.py get s3://BUCKET/PREFIX LOCAL_DIR   download every object under PREFIX
    s3.py ls s3://BUCKET/PREFIX              print the keys under PREFIX

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...), as kiln reads them.
"""
import os
import sys
from pathlib import Path

import boto3


def split(url):
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def main(cmd, *args):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    if cmd == "put":
        local, url = Path(args[0]), args[1]
        bucket, prefix = split(url)
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                key = "/".join(p for p in [prefix, f.relative_to(local).as_posix()] if p)
                s3.upload_file(str(f), bucket, key)
    elif cmd in ("get", "ls"):
        bucket, prefix = split(args[0])
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for key in keys:
            if cmd == "ls":
                print(key)
                continue
            to = Path(args[1]) / key[len(prefix):].lstrip("/")
            to.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(to))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(*sys.argv[1:])
