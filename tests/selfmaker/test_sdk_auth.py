"""The real SageMaker Python SDK (tests/sdkkit.py) against a `selfmaker up` that has an access key: with the
key it works unchanged (Model.deploy → predict → delete); with a wrong secret its calls are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import sdkkit
from platform_helpers import PlatformProcess, create_key, moto_env, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyed_sdk_platform(
    tmp_path_factory: pytest.TempPathFactory, moto_server: str
) -> Iterator[PlatformProcess]:
    """A keyed `selfmaker up` whose S3 is the moto server."""
    home = tmp_path_factory.mktemp("sdk-keyed-home")
    key = create_key(home, "sdk")
    with running(home, env=moto_env(moto_server), key=key) as server:
        yield server


def test_sdk_with_the_key_deploys_and_predicts(
    keyed_sdk_platform: PlatformProcess, moto_server: str, onnx_model_tar: str, tmp_path: Path
) -> None:
    assert keyed_sdk_platform.key is not None
    key_id, secret = keyed_sdk_platform.key
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    s3.create_bucket(Bucket="sdk-auth")
    s3.put_object(
        Bucket="sdk-auth", Key="model/model.tar.gz", Body=Path(onnx_model_tar[len("file://") :]).read_bytes()
    )
    # moto takes any key, so the SDK's one set of credentials serves both S3 and the platform
    env = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    run = sdkkit.run_sdk(
        """
        from sagemaker.model import Model
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import JSONDeserializer

        model = Model(
            image_uri="selfmaker", model_data="s3://sdk-auth/model/model.tar.gz", role=ROLE,
            sagemaker_session=session, predictor_cls=Predictor,
        )
        predictor = model.deploy(
            1, "ml.m5.large", serializer=CSVSerializer(), deserializer=JSONDeserializer()
        )
        try:
            answer = predictor.predict([[1.0, 2.0, 0.5, 0.1], [-1.0, -2.0, 0.0, 0.0]])
        finally:
            predictor.delete_endpoint()
        result({"answer": answer, "endpoint": predictor.endpoint_name})
        """,
        platform_url=keyed_sdk_platform.url,
        moto_url=moto_server,
        workdir=tmp_path / "sdk",
        bucket="sdk-auth",
        env=env,
    ).check()
    assert run.result["answer"] and run.result["endpoint"]

    refused = sdkkit.run_sdk(
        """
        import botocore.exceptions
        try:
            session.sagemaker_client.list_models()
        except botocore.exceptions.ClientError as exc:
            error, meta = exc.response["Error"], exc.response["ResponseMetadata"]
            result({"code": error["Code"], "status": meta["HTTPStatusCode"]})
        """,
        platform_url=keyed_sdk_platform.url,
        moto_url=moto_server,
        workdir=tmp_path / "sdk-wrong",
        bucket="sdk-auth",
        env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret + "x"},
    ).check()
    assert refused.result == {"code": "InvalidSignatureException", "status": 403}
