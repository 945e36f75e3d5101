"""storage: create the S3 bucket an ``s3://bucket/prefix`` setting names when it is missing
(MinIO, or AWS where the credentials may create buckets), so switching a store to S3 is a
change of settings only.

Used by ``busi up`` for ``BUSI_MLFLOW_ARTIFACTS=s3://...``, and by hand for the other
stores: ``python -m busi.storage s3://busi-data s3://busi-mlflow --endpoint-url
http://127.0.0.1:9000``. Credentials come as boto3 finds them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); the endpoint from the argument, else
``MLFLOW_S3_ENDPOINT_URL`` / ``BUSI_S3_ENDPOINT_URL``, else AWS itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from busi.errors import BusiError

logger = logging.getLogger(__name__)

# botocore's error codes for "no such bucket" (HEAD answers a bare status code).
MISSING = {"404", "NoSuchBucket", "NotFound"}
ALREADY_OURS = {"BucketAlreadyOwnedByYou"}


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise BusiError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise BusiError(f"{url!r}: no bucket name (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def s3_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3 API endpoint the settings name (MinIO, moto), or None for AWS itself."""
    environ = os.environ if environ is None else environ
    return environ.get("MLFLOW_S3_ENDPOINT_URL") or environ.get("BUSI_S3_ENDPOINT_URL") or None


def ensure_bucket(url: str, endpoint_url: str | None = None, client=None) -> bool:
    """Create the bucket of ``url`` unless it exists; True when it was created."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3_url(url)
    if client is None:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint_url or s3_endpoint())
    where = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code not in MISSING:
            raise BusiError(
                f"cannot check the bucket {bucket} at {where} ({code}): check the AWS "
                "credentials and that the bucket is yours"
            ) from exc
    except BotoCoreError as exc:
        raise BusiError(
            f"cannot reach S3 at {where} for the bucket {bucket}: {exc}; check "
            "MLFLOW_S3_ENDPOINT_URL / BUSI_S3_ENDPOINT_URL and the AWS credentials"
        ) from exc
    region = client.meta.region_name
    kwargs = {"Bucket": bucket}
    if region and region != "us-east-1":  # AWS wants the region named, except its first one
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ALREADY_OURS:
            return False
        raise BusiError(
            f"the bucket {bucket} does not exist at {where} and could not be created "
            f"({code}): create it yourself, or use credentials allowed s3:CreateBucket"
        ) from exc
    logger.info("created the bucket %s at %s", bucket, where)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m busi.storage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("urls", nargs="+", metavar="s3://bucket[/prefix]", help="S3 URLs to create")
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 API endpoint (default: $MLFLOW_S3_ENDPOINT_URL, else $BUSI_S3_ENDPOINT_URL)",
    )
    args = parser.parse_args(argv)
    try:
        for url in args.urls:
            created = ensure_bucket(url, args.endpoint_url)
            print(f"{split_s3_url(url)[0]}: {'created' if created else 'exists'}")
    except BusiError as exc:
        print(f"storage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
