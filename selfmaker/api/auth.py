"""SigV4 authentication of every call to `selfmaker up` (but ``GET /ping``), with botocore's own signer.

When the platform has access keys (``selfmaker keys create``), or listens on anything but loopback, a
request must carry an AWS Signature Version 4 — an ``Authorization: AWS4-HMAC-SHA256 …`` header, or a
presigned URL's ``X-Amz-Algorithm`` … ``X-Amz-Signature`` query parameters. :class:`Authenticator`
rebuilds the request as botocore saw it (method, path and query as sent, the signed headers, the body)
and recomputes the signature with :class:`botocore.auth.SigV4Auth` and the stored secret, then compares
in constant time. It also checks:

* the credential scope: the platform's region, and the signing name of the API called (:data:`APIS`:
  ``sagemaker`` for the control plane and for the runtime — botocore's ``signingName`` of
  ``sagemaker-runtime`` — ``logs`` for CloudWatch Logs, ``monitoring`` for CloudWatch);
* the clock: the signature's date within :data:`MAX_SKEW` of now (a presigned URL: until it expires);
* that ``host``, the date and every ``x-amz-*`` / ``x-amzn-sagemaker-*`` header sent are signed, and that
  signed headers are printable ASCII;
* the key's allow-list (IAM action syntax) against the action called.

What the headers alone decide (:meth:`Authenticator.identify`) is checked before the body is read, the
rest (:meth:`Authenticator.check`) after. Refusals are AWS's codes (:mod:`selfmaker.errors`,
``AuthError``), rendered by :mod:`selfmaker.api.app` in the shape of the API called. Neither the
secret nor a signature is ever logged or echoed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy

from selfmaker.credentials import AccessKey, CredentialStore
from selfmaker.errors import (
    AccessDenied,
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)

log = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
#: how far a signature's date may be from the platform's clock (AWS: 5 minutes)
MAX_SKEW = dt.timedelta(minutes=5)
#: longest validity of a presigned URL (AWS: 7 days)
MAX_EXPIRES = 7 * 24 * 3600
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: seconds between looks at the credentials file on the request path
KEYS_MAX_AGE = 1.0


@dataclass(frozen=True)
class Api:
    """An API served on the platform's port: its name, the service its signatures are scoped to
    (botocore's ``signingName``) and the prefix of its IAM actions."""

    name: str
    signing_name: str
    iam_prefix: str


#: the APIs by name; a new API served beside these adds a row (and a way to recognise it below)
APIS: dict[str, Api] = {
    "sagemaker": Api("sagemaker", "sagemaker", "sagemaker"),
    "sagemaker-runtime": Api("sagemaker-runtime", "sagemaker", "sagemaker"),
    "logs": Api("logs", "logs", "logs"),
    "cloudwatch": Api("cloudwatch", "monitoring", "cloudwatch"),
    # the platform's own routes (GET /metrics …): signed like the control plane
    "selfmaker": Api("selfmaker", "sagemaker", "selfmaker"),
}
#: ``X-Amz-Target`` prefixes of the JSON-protocol APIs
TARGET_PREFIXES: dict[str, str] = {
    "SageMaker": "sagemaker",
    "Logs_20140328": "logs",
    "GraniteServiceVersion20100801": "cloudwatch",
}
#: the runtime's routes ``/endpoints/{name}/<route>`` and their actions
RUNTIME_ACTIONS: dict[str, str] = {
    "invocations": "InvokeEndpoint",
    "invocations-response-stream": "InvokeEndpointWithResponseStream",
    "async-invocations": "InvokeEndpointAsync",
}
_RUNTIME_PATH = re.compile(r"^/endpoints/[^/]+/([a-z-]+)$")
_CBOR_PATH = re.compile(r"^/service/([A-Za-z0-9_]+)/operation/([A-Za-z0-9]+)$")
_QUERY_ACTION = re.compile(r"(?:^|&)Action=([A-Za-z0-9]+)(?:&|$)")
_OPERATION = re.compile(r"^[A-Za-z0-9]+$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
#: headers a client must sign when it sends them (besides host and the date): they choose what runs
_MUST_SIGN_PREFIXES = ("x-amz-", "x-amzn-sagemaker-")
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


def called_action(method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[Api, str]:
    """The API a request is for and the IAM action it calls (``sagemaker:CreateModel``)."""
    target = headers.get("X-Amz-Target", "")
    if path == "/" and target:
        prefix, _, operation = target.partition(".")
        api = APIS[TARGET_PREFIXES.get(prefix, "sagemaker")]
        return api, f"{api.iam_prefix}:{operation if _OPERATION.match(operation) else 'Unknown'}"
    if path == "/" and method == "POST":
        # CloudWatch's query protocol: Action=PutMetricData&Version=2010-08-01 in a form body
        found = _QUERY_ACTION.search(body[:4096].decode("latin-1"))
        if found and "Version=2010-08-01" in body[:4096].decode("latin-1"):
            return APIS["cloudwatch"], f"cloudwatch:{found.group(1)}"
    runtime = _RUNTIME_PATH.match(path)
    if runtime and runtime.group(1) in RUNTIME_ACTIONS:
        return APIS["sagemaker-runtime"], f"sagemaker:{RUNTIME_ACTIONS[runtime.group(1)]}"
    cbor = _CBOR_PATH.match(path)
    if cbor and cbor.group(1) in TARGET_PREFIXES:
        api = APIS[TARGET_PREFIXES[cbor.group(1)]]
        return api, f"{api.iam_prefix}:{cbor.group(2)}"
    if path == "/metrics":
        return APIS["selfmaker"], "selfmaker:GetMetrics"
    if path == "/" or path == "/console" or path.startswith("/console/"):  # the web console (GET)
        return APIS["selfmaker"], "selfmaker:ViewConsole"
    return APIS["selfmaker"], "selfmaker:Unknown"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the platform on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SignedRequest:
    """What a request says about its signature, parsed from the header or the query."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str
    expires: int | None  # presigned URLs only


def _one(values: list[str], what: str) -> str | None:
    if len(values) > 1:
        raise IncompleteSignature(f"The request holds {len(values)} {what}; a signed request holds one.")
    return values[0] if values else None


def _split_scope(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise IncompleteSignature(
            "Credential must have the form <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request."
        )
    return parts[0], parts[1], parts[2], parts[3]


def _check_signature_text(signature: str) -> str:
    if not _SIGNATURE.match(signature):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal characters.")
    return signature


def _signed_header_names(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not text or any(not n or n != n.lower() or not n.isascii() for n in names):
        raise IncompleteSignature("SignedHeaders must be lowercase header names separated by ';'.")
    return names


def _parse_authorization(header: str, amz_dates: list[str], http_dates: list[str]) -> SignedRequest:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Unsupported authorization algorithm {algorithm[:40]!r}: use {ALGORITHM}.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq:
            raise IncompleteSignature(f"Authorization header part {name[:40]!r} is not name=value.")
        if name in fields:
            raise IncompleteSignature(f"Authorization header holds {name} twice.")
        fields[name] = value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise IncompleteSignature(
            f"Authorization header requires {', '.join(repr(n) for n in missing)} parameter(s)."
        )
    key_id, date, region, service = _split_scope(fields["Credential"])
    amz_date = _one(amz_dates, "X-Amz-Date headers")
    if amz_date is not None:
        timestamp = amz_date
    else:
        http_date = _one(http_dates, "Date headers")
        if http_date is None:
            raise IncompleteSignature("A signed request needs an X-Amz-Date (or Date) header.")
        try:
            parsed = parsedate_to_datetime(http_date)
        except (TypeError, ValueError):
            raise IncompleteSignature("The Date header is not an HTTP date.") from None
        timestamp = parsed.astimezone(dt.timezone.utc).strftime(SIGV4_TIMESTAMP)
    return SignedRequest(
        key_id=key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=_signed_header_names(fields["SignedHeaders"]),
        signature=_check_signature_text(fields["Signature"]),
        timestamp=timestamp,
        expires=None,
    )


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _parse_presigned(pairs: list[tuple[str, str]]) -> SignedRequest:
    def param(name: str) -> str:
        value = _one([v for n, v in pairs if n == name], f"{name} query parameters")
        if value is None:
            raise IncompleteSignature(f"A presigned URL needs the {name} query parameter.")
        return value

    if param("X-Amz-Algorithm") != ALGORITHM:
        raise IncompleteSignature(f"X-Amz-Algorithm must be {ALGORITHM}.")
    key_id, date, region, service = _split_scope(param("X-Amz-Credential"))
    try:
        expires = int(param("X-Amz-Expires"))
    except ValueError:
        raise IncompleteSignature("X-Amz-Expires must be a number of seconds.") from None
    if not 1 <= expires <= MAX_EXPIRES:
        raise IncompleteSignature(f"X-Amz-Expires must be between 1 and {MAX_EXPIRES} seconds.")
    return SignedRequest(
        key_id=key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=_signed_header_names(param("X-Amz-SignedHeaders")),
        signature=_check_signature_text(param("X-Amz-Signature")),
        timestamp=param("X-Amz-Date"),
        expires=expires,
    )


class Authenticator:
    """Checks the SigV4 signature of requests against the keys in the platform's credentials file.

    ``required``: every request must be signed even while the file holds no key (a platform bound to a
    non-loopback address; with no key, nothing gets in). Otherwise requests are checked once a key exists.
    ``enabled=False`` (``--no-auth``) checks nothing.
    """

    def __init__(self, store: CredentialStore, region: str, *, required: bool, enabled: bool = True) -> None:
        self.store = store
        self.region = region
        self.required = required and enabled
        self.enabled = enabled

    def active(self) -> bool:
        """Whether requests must be signed right now."""
        return self.enabled and (self.required or bool(self.store.keys(max_age=KEYS_MAX_AGE)))

    def identify(
        self, *, raw_path: str, headers: CIMultiDictProxy[str], now: dt.datetime | None = None
    ) -> tuple[SignedRequest, AccessKey]:
        """What can be checked before the body is read — a signature is there and well formed, its key is
        one of ours, its date is current, the headers that must be signed are — so that a stranger
        cannot make the platform read (up to 64 MiB of) a body; an :class:`selfmaker.errors.AuthError`."""
        signed = self._parse(raw_path, headers)
        key = self.store.keys(max_age=KEYS_MAX_AGE).get(signed.key_id)
        if key is None:
            raise UnrecognizedClient("The security token included in the request is invalid.")
        if signed.region != self.region:
            raise InvalidSignature(
                f"Credential should be scoped to a valid region: this platform is {self.region!r}, "
                f"not {signed.region[:40]!r}."
            )
        if signed.timestamp[:8] != signed.date:
            raise InvalidSignature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"{signed.date[:16]!r} != {signed.timestamp[:8]!r}."
            )
        self._check_clock(signed, now or dt.datetime.now(dt.timezone.utc))
        self._check_signed_headers(signed, headers, presigned=signed.expires is not None)
        return signed, key

    @staticmethod
    def _parse(raw_path: str, headers: CIMultiDictProxy[str]) -> SignedRequest:
        _, _, query = raw_path.partition("?")
        pairs = _query_pairs(query)
        authorization = _one(headers.getall("Authorization", []), "Authorization headers")
        presigned = any(n in ("X-Amz-Signature", "X-Amz-Algorithm") for n, _ in pairs)
        if authorization is None and not presigned:
            raise MissingAuthenticationToken("Missing Authentication Token")
        if authorization is not None and presigned:
            raise IncompleteSignature(
                "The request is signed twice (Authorization header and X-Amz-Signature query parameter)."
            )
        if authorization is not None:
            return _parse_authorization(
                authorization, headers.getall("X-Amz-Date", []), headers.getall("Date", [])
            )
        return _parse_presigned(pairs)

    def check(
        self,
        *,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        secure: bool,
        now: dt.datetime | None = None,
        identified: tuple[SignedRequest, AccessKey] | None = None,
    ) -> AccessKey:
        """The key that signed the request, or an :class:`selfmaker.errors.AuthError` (``identified``:
        what :meth:`identify` answered for this request before its body was read)."""
        signed, key = identified or self.identify(raw_path=raw_path, headers=headers, now=now)
        path = raw_path.partition("?")[0]
        api, action = called_action(method, path, headers, body)
        self._check_scope(signed, api)
        payload_hash = self._payload_hash(headers, body, secure=secure)
        expected = self._signature(key, signed, method, raw_path, headers, payload_hash, api)
        if not hmac.compare_digest(expected, signed.signature):
            raise InvalidSignature(_MISMATCH)
        if not key.allows(action):
            raise AccessDenied(f"Key {key.key_id} is not authorized to perform: {action}")
        return key

    @staticmethod
    def _check_scope(signed: SignedRequest, api: Api) -> None:
        """The scope's service fits the API called (the region was checked by :meth:`identify`)."""
        if signed.service != api.signing_name:
            raise InvalidSignature(f"Credential should be scoped to correct service: {api.signing_name!r}.")

    @staticmethod
    def _check_clock(signed: SignedRequest, now: dt.datetime) -> None:
        found = _TIMESTAMP.match(signed.timestamp)
        try:
            if found is None:
                raise ValueError(signed.timestamp)
            year, month, day, hour, minute, second = (int(part) for part in found.groups())
            when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
        except ValueError:
            raise IncompleteSignature(
                "X-Amz-Date must be an ISO-8601 basic date and time (YYYYMMDD'T'HHMMSS'Z')."
            ) from None
        stamp = now.strftime(SIGV4_TIMESTAMP)
        if when > now + MAX_SKEW:
            raise InvalidSignature(
                f"Signature not yet current: {signed.timestamp} is still later than "
                f"{(now + MAX_SKEW).strftime(SIGV4_TIMESTAMP)} ({stamp} + 5 min.)"
            )
        if signed.expires is not None:
            if now > when + dt.timedelta(seconds=signed.expires):
                raise InvalidSignature(
                    f"Request has expired: signed at {signed.timestamp} for {signed.expires} s."
                )
        elif when < now - MAX_SKEW:
            raise InvalidSignature(
                f"Signature expired: {signed.timestamp} is now earlier than "
                f"{(now - MAX_SKEW).strftime(SIGV4_TIMESTAMP)} ({stamp} - 5 min.)"
            )

    @staticmethod
    def _check_signed_headers(
        signed: SignedRequest, headers: CIMultiDictProxy[str], *, presigned: bool
    ) -> None:
        names = set(signed.signed_headers)
        if "host" not in names:
            raise IncompleteSignature("The host header must be signed.")
        if not presigned and not ({"x-amz-date", "date"} & names):
            raise IncompleteSignature("The X-Amz-Date (or Date) header must be signed.")
        for name in headers:
            lower = name.lower()
            if lower.startswith(_MUST_SIGN_PREFIXES) and lower not in names:
                raise IncompleteSignature(f"The {lower} header was sent but not signed.")
        for name in names:
            values = headers.getall(name, [])
            if not values:
                raise IncompleteSignature(f"The signed header {name!r} is not in the request.")
            if any(not (v.isascii() and v.isprintable()) for v in values):
                raise IncompleteSignature(
                    f"The signed header {name!r} holds characters outside printable ASCII."
                )

    @staticmethod
    def _payload_hash(headers: CIMultiDictProxy[str], body: bytes, *, secure: bool) -> str:
        actual = hashlib.sha256(body).hexdigest()
        declared = _one(headers.getall("X-Amz-Content-SHA256", []), "X-Amz-Content-SHA256 headers")
        if declared is None or declared == actual:
            return actual
        if declared == UNSIGNED_PAYLOAD and secure:  # as AWS: an unsigned body only under TLS
            return declared
        raise IncompleteSignature("The X-Amz-Content-SHA256 header does not match the request body.")

    @staticmethod
    def _signature(
        key: AccessKey,
        signed: SignedRequest,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        payload_hash: str,
        api: Api,
    ) -> str:
        """The signature botocore computes for this request with ``key``'s secret."""
        path, _, query = raw_path.partition("?")
        if signed.expires is not None:  # the canonical query string is everything but the signature
            query = "&".join(p for p in query.split("&") if p.partition("=")[0] != "X-Amz-Signature")
        # https and payload signing off: botocore then puts a constant where the payload hash goes instead
        # of preparing and hashing this rebuilt request's body (replaced by the real hash below)
        request = AWSRequest(
            method=method, url=f"https://selfmaker.invalid{path}" + (f"?{query}" if query else "")
        )
        request.context["payload_signing_enabled"] = False
        for name in signed.signed_headers:
            for value in headers.getall(name):
                request.headers[name] = value
        signer = SigV4Auth(Credentials(key.key_id, key.secret), api.signing_name, signed.region)
        request.context["timestamp"] = signed.timestamp
        # the last line is the payload hash: the body's, checked above (botocore would hash the empty body
        # of this rebuilt request, or trust X-Amz-Content-SHA256)
        canonical = signer.canonical_request(request).rpartition("\n")[0] + "\n" + payload_hash
        return str(signer.signature(signer.string_to_sign(request, canonical), request))
