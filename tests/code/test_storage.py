"""S3 for the MLflow artifact store: buckets made on demand (busi.storage), and an
MLflow server started the way `busi up` starts it with BUSI_MLFLOW_ARTIFACTS=s3://... on a
moto server, through which a client holding no AWS keys logs and loads artifacts and models.

(DVC push/pull to S3 is in test_ingest_data.py, the S3 landing zone in test_ingest_batch.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.stub import Stubber

from busi.errors import BusiError
from busi.local.services import mlflow_service, settings_from_env
from busi.storage import ensure_bucket, s3_endpoint, split_s3_url
from tests.conftest import free_port, started_service

# moto accepts any key; these never leave the test.
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
BUCKET = "busi-mlflow"


def _client(endpoint_url: str | None = None, region: str = "us-east-1"):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or "http://127.0.0.1:9",
        region_name=region,
        aws_access_key_id=TEST_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_KEYS["AWS_SECRET_ACCESS_KEY"],
    )


def test_split_s3_url():
    assert split_s3_url("s3://busi/mlflow/artifacts/") == ("busi", "mlflow/artifacts")
    assert split_s3_url("s3://busi") == ("busi", "")
    for bad in ("/data/busi", "s3:///prefix", "gs://busi"):
        with pytest.raises(BusiError):
            split_s3_url(bad)


def test_the_mlflow_endpoint_wins_then_the_busi_one():
    both = {"MLFLOW_S3_ENDPOINT_URL": "http://a:9000", "BUSI_S3_ENDPOINT_URL": "http://b:9000"}
    assert s3_endpoint(both) == "http://a:9000"
    assert s3_endpoint({"BUSI_S3_ENDPOINT_URL": "http://b:9000"}) == "http://b:9000"
    assert s3_endpoint({"MLFLOW_S3_ENDPOINT_URL": ""}) is None


def test_a_missing_bucket_is_created_in_the_clients_region():
    client = _client(region="eu-west-1")
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", "404", http_status_code=404)
        stub.add_response(
            "create_bucket",
            {"Location": "/busi"},
            {"Bucket": "busi", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}},
        )
        assert ensure_bucket("s3://busi/mlflow", client=client) is True
        stub.assert_no_pending_responses()


def test_a_bucket_we_may_not_read_or_create_is_a_clear_error():
    client = _client()
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", "403", http_status_code=403)
        with pytest.raises(BusiError, match=r"cannot check the bucket busi .*credentials"):
            ensure_bucket("s3://busi", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", "404", http_status_code=404)
        stub.add_client_error("create_bucket", "AccessDenied", http_status_code=403)
        with pytest.raises(BusiError, match=r"could not be created \(AccessDenied\)"):
            ensure_bucket("s3://busi", client=client)


def test_an_unreachable_endpoint_names_the_settings():
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        config=Config(connect_timeout=1, retries={"max_attempts": 1}),
        **{k.lower(): v for k, v in TEST_KEYS.items()},
    )
    with pytest.raises(BusiError, match="MLFLOW_S3_ENDPOINT_URL"):
        ensure_bucket("s3://busi", client=client)


@pytest.mark.slow
def test_proxied_s3_artifacts_need_no_keys_on_the_client(moto_server, tmp_path, monkeypatch):
    import mlflow

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[int], params=None) -> list[int]:
            return [2 * x for x in model_input]

    url = f"s3://{BUCKET}/mlflow"
    keyed = _client(moto_server)
    assert ensure_bucket(url, client=keyed) is True  # what `busi up` does first
    assert ensure_bucket(url, client=keyed) is False

    settings = settings_from_env(
        tmp_path,
        {
            "BUSI_PLATFORM_DIR": str(tmp_path / "platform"),
            "BUSI_MLFLOW_PORT": str(free_port()),
            "BUSI_MLFLOW_ARTIFACTS": url,
        },
    )
    # The keys and the endpoint live in the server's environment only.
    server_env = {**os.environ, **TEST_KEYS, "BUSI_S3_ENDPOINT_URL": moto_server}
    service = mlflow_service(settings, server_env)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    assert boto3.Session().get_credentials() is None, "the client side must hold no AWS keys"

    report = tmp_path / "report.txt"
    report.write_text("dice 0.61\n")
    with started_service(service, tmp_path, timeout=180):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        mlflow.set_experiment("busi-s3")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(report), "reports")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=Doubler(), pip_requirements=["mlflow"]
            )
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, not s3://
        back = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="reports/report.txt", dst_path=str(tmp_path)
        )
        assert Path(back).read_text() == "dice 0.61\n"
        model = mlflow.pyfunc.load_model(info.model_uri)
        assert model.predict([1, 2]) == [2, 4]

    keys = [o["Key"] for o in keyed.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(k.startswith("mlflow/") for k in keys)
    assert any(k.endswith("reports/report.txt") for k in keys)
    assert any(k.endswith("/MLmodel") for k in keys)
