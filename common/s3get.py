"""Download one S3 object with the standard library alone (a SigV4-signed GET).

Used by serving's Lambda mode (serving/lambda_handler.py) to fetch ``model.tar.gz`` during a cold start
*while* numpy, onnxruntime and pydantic are still importing: boto3 costs ~0.2-0.5 s of imports before the
first byte, this module nothing. Credentials come from the environment, as Lambda gives them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``);
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` point it at another S3 (path-style). When the environment
has no keys, :func:`credentials_from_env` says so and the caller uses boto3's full credential chain.

The signature is AWS Signature Version 4 for S3 (``UNSIGNED-PAYLOAD`` is not used: a GET's payload hash is
the empty body's); tests/common/test_common_s3get.py checks it header for header against botocore's signer.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common import uris

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3GetError(Exception):
    """The object could not be fetched; the message names the URI and the reason."""


@dataclass(frozen=True)
class Credentials:
    """Static credentials of the signing request (Lambda's execution role session)."""

    access_key: str
    secret_key: str
    token: str | None = None


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """The environment's keys, or None when it has none (then use boto3's credential chain)."""
    env = os.environ if env is None else env
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        return None
    return Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None)


def _split(uri: str) -> tuple[str, str]:
    bucket, key = uris.split_s3(uri, error=S3GetError)  # the key verbatim: ?, # and % are part of it
    if not key:
        raise S3GetError(f"bad S3 URI {uri!r}; expected s3://bucket/key")
    return bucket, key


def object_url(bucket: str, key: str, region: str, endpoint: str | None = None) -> str:
    """The object's URL: virtual-hosted on AWS, path-style on a custom endpoint (moto, MinIO)."""
    quoted = urllib.parse.quote(key, safe="/~")  # the signed path and the sent path are the same string
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{quoted}"
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{bucket}.s3.{region}.{suffix}/{quoted}"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_get(
    url: str, region: str, credentials: Credentials, now: datetime.datetime | None = None
) -> dict[str, str]:
    """The headers of a SigV4-signed ``GET url`` for service ``s3`` (Host, X-Amz-*, Authorization)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parsed = urllib.parse.urlsplit(url)
    host = parsed.netloc
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = sorted(headers)
    canonical_request = "\n".join(
        [
            "GET",
            parsed.path or "/",  # already URI-encoded once, as S3 expects (no double encoding for s3)
            parsed.query,
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            ";".join(names),
            EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{credentials.secret_key}".encode(), day), region), "s3"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "Host": host,
        "X-Amz-Content-SHA256": EMPTY_SHA256,
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}",
    }
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    return out


def fetch(
    uri: str,
    dest: Path,
    *,
    credentials: Credentials,
    region: str,
    endpoint: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``s3://bucket/key`` to ``dest`` (raises :class:`S3GetError` naming the URI)."""
    bucket, key = _split(uri)
    url = object_url(bucket, key, region, endpoint)
    request = urllib.request.Request(url, headers=sign_get(url, region, credentials), method="GET")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(partial, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        detail = exc.read(2048).decode("utf-8", errors="replace")
        code = detail.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in detail else exc.reason
        raise S3GetError(f"cannot download {uri}: HTTP {exc.code} {code}") from exc
    except OSError as exc:
        raise S3GetError(f"cannot download {uri}: {exc}") from exc
    partial.replace(dest)
    return dest
