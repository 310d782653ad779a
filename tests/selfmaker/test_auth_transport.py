"""Transport and operator commands of #26: `selfmaker up --tls-cert/--tls-key` (HTTPS, TLS 1.2+, boto3 with
``verify=`` the test's CA), the refusal to listen beyond loopback without keys, ``--no-auth``, the
``selfmaker keys`` command, log rotation of a live appender and ``selfmaker logs --follow``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from platform_helpers import ROOT, create_key, running
from testkit import sigint_default, wait_until

from selfmaker.commands.up import tls_context
from selfmaker.logrotate import rotate, rotated_parts, sweep


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfmaker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=str(ROOT),
        check=False,
    )


def write_certificate(dest: Path, *, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and ``name``) and its key, as PEM files (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    dest.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = dest / "cert.pem", dest / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_with_a_key(tmp_path: Path) -> None:
    cert, key_file = write_certificate(tmp_path / "tls")
    home = tmp_path / "home"
    key = create_key(home, "tls")
    args = ["--tls-cert", str(cert), "--tls-key", str(key_file)]
    with running(home, args=args, key=key, tls_ca=cert) as server:
        assert server.url.startswith("https://")
        assert server.sagemaker().list_models()["Models"] == []  # boto3 verifying against the test's CA
        announced = json.loads((home / "platform.json").read_text())
        assert announced["url"] == server.url
        # plain HTTP to the TLS port gets no answer from the API
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{server.port}/ping", timeout=10)
        # nothing older than TLS 1.2
        context = ssl.create_default_context(cafile=str(cert))
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1"
        ) as tls:
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert tls_context(cert, key_file).minimum_version == ssl.TLSVersion.TLSv1_2
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(cert))
        with warnings.catch_warnings():  # offering TLS 1.1 on purpose: the server must refuse it
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                old.set_ciphers("DEFAULT:@SECLEVEL=0")
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ValueError, ssl.SSLError):
                pytest.skip("this OpenSSL cannot offer TLS 1.1")
            with (
                pytest.raises((ssl.SSLError, OSError)),
                old.wrap_socket(
                    socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1"
                ),
            ):
                pass


def test_bad_tls_files_are_one_clear_error(tmp_path: Path) -> None:
    cert, key_file = write_certificate(tmp_path / "tls")
    other_cert, _ = write_certificate(tmp_path / "other")
    home = str(tmp_path / "home")
    cases = [
        (
            ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key_file)],
            "cannot use the TLS certificate",
        ),
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-key", str(key_file)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(other_cert), "--tls-key", str(key_file)], "cannot use the TLS certificate"),
        (["--tls-cert", str(key_file), "--tls-key", str(key_file)], "cannot use the TLS certificate"),
    ]
    for args, message in cases:
        proc = run("up", "--home", home, "--port", "0", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert not (tmp_path / "home").exists()  # nothing else changed: not even the home made


def test_no_keys_beyond_loopback_is_refused(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no machine: were the refusal missing, binding it would fail differently
    proc = run("up", "--home", str(tmp_path / "home"), "--host", "192.0.2.1", "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "selfmaker up: refusing to listen on 192.0.2.1 without access keys: anyone who reaches the port "
        "could run code as this user; create one with `selfmaker keys create`, or pass --no-auth"
    ]
    # --no-auth lifts the refusal, and says so (the address is then simply not this machine's)
    proc = run("up", "--home", str(tmp_path / "open"), "--host", "192.0.2.1", "--port", "0", "--no-auth")
    assert proc.returncode == 2 and "cannot listen on 192.0.2.1" in proc.stderr, proc.stderr
    assert "--no-auth: no signature is checked; anyone who reaches 192.0.2.1:0 can run code" in proc.stderr
    # with a key the refusal is gone too
    create_key(tmp_path / "home")
    proc = run("up", "--home", str(tmp_path / "home"), "--host", "192.0.2.1", "--port", "0")
    assert proc.returncode == 2 and "cannot listen on 192.0.2.1" in proc.stderr, proc.stderr
    assert "serving plain HTTP on 192.0.2.1: requests and answers travel unencrypted" in proc.stderr


def test_an_unreadable_credentials_file_stops_the_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "credentials").write_text('{"keys": [{"key_id": "SMAKX"}]}')  # no secret
    proc = run("up", "--home", str(home), "--port", "0")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot read the access keys" in proc.stderr
    assert "is not a selfmaker credentials file" in proc.stderr


def test_no_auth_checks_nothing_and_says_so_at_every_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    create_key(home)
    for _ in range(2):
        with running(home, args=["--no-auth"]) as server:
            unsigned = requests.post(
                server.url + "/",
                data=b"{}",
                headers={
                    "X-Amz-Target": "SageMaker.ListModels",
                    "Content-Type": "application/x-amz-json-1.1",
                },
                timeout=30,
            )
            assert unsigned.status_code == 200, unsigned.text
    log = (home / "logs" / "selfmaker.log").read_text()
    assert log.count("--no-auth: no signature is checked") == 2


def test_the_keys_command(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert "no keys in" in run("keys", "--home", home, "list").stdout
    created = run("keys", "--home", home, "create", "--name", "ci", "--allow", "sagemaker:InvokeEndpoint")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert lines[0].startswith("AWS_ACCESS_KEY_ID=SMAK") and lines[1].startswith("AWS_SECRET_ACCESS_KEY=")
    key_id, secret = lines[0].split("=", 1)[1], lines[1].split("=", 1)[1]
    assert "shown only now" in created.stderr
    assert (Path(home) / "credentials").stat().st_mode & 0o777 == 0o600
    listed = run("keys", "list", "--home", home, "--json")
    assert json.loads(listed.stdout) == [
        {
            "KeyId": key_id,
            "Name": "ci",
            "Created": json.loads(listed.stdout)[0]["Created"],
            "Actions": ["sagemaker:InvokeEndpoint"],
        }
    ]
    assert secret not in listed.stdout and secret not in run("keys", "--home", home, "list").stdout
    for args, message in (
        (["create", "--allow", "InvokeEndpoint"], "is not an IAM action"),
        (["create", "--name", "ci"], "a key named 'ci' exists already"),
        (["create", "--name", "has space"], "key name 'has space'"),
        (["delete", "SMAKNOSUCHKEY"], "no key 'SMAKNOSUCHKEY'"),
    ):
        proc = run("keys", "--home", home, *args)
        assert (
            proc.returncode == 2 and proc.stderr.startswith("selfmaker keys: ") and message in proc.stderr
        ), proc.stderr
        assert "Traceback" not in proc.stderr
    assert run("keys", "--home", home, "delete", "ci").stdout.strip() == f"deleted {key_id} (ci)"
    assert json.loads(run("keys", "--home", home, "list", "--json").stdout) == []
    (Path(home) / "credentials").write_text("not json")
    broken = run("keys", "--home", home, "list")
    assert broken.returncode == 2 and "is not a selfmaker credentials file" in broken.stderr


def test_rotation_keeps_a_live_appender_writing(tmp_path: Path) -> None:
    """A child appending to its log through an inherited O_APPEND descriptor (as model servers do) keeps
    writing into the live file across rotations; parts beyond the kept number are dropped."""
    log = tmp_path / "logs" / "endpoints" / "e" / "i.log"
    log.parent.mkdir(parents=True)
    script = "import sys\nfor line in sys.stdin:\n    print(line.strip(), flush=True)\n"
    with open(log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=out, text=True)
    try:
        assert child.stdin is not None
        written = 0
        for _ in range(4):
            for _ in range(50):
                child.stdin.write(f"line {written:05d} {'x' * 40}\n")
                written += 1
            child.stdin.flush()
            last = f"line {written - 1:05d}"
            wait_until(lambda last=last: last in log.read_text(), timeout=30, what="the child wrote")
            assert sweep(tmp_path / "logs", 1000, 2) == [log]
            assert log.stat().st_size == 0
        child.stdin.write("after rotation\n")
        child.stdin.flush()
        wait_until(
            lambda: log.read_text() == "after rotation\n", timeout=30, what="the child writes at the start"
        )
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(30)
    parts = rotated_parts(log)
    assert [p.name for p in parts] == ["i.log.2", "i.log.1"]  # oldest first; 2 of the 4 kept
    assert parts[1].read_text().splitlines()[0] == "line 00150 " + "x" * 40
    assert parts[0].read_text().splitlines()[-1] == "line 00149 " + "x" * 40
    assert sweep(tmp_path / "logs", 0, 2) == []  # 0: never
    rotate(log, 0)  # no parts kept: the old ones go, the live file is emptied in place
    assert log.stat().st_size == 0 and rotated_parts(log) == []


def test_logs_follow(tmp_path: Path) -> None:
    """`selfmaker logs NAME --follow` prints the log, then what is appended, across a rotation, until
    stopped."""
    home = tmp_path / "home"
    log = home / "logs" / "training-jobs" / "job-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("first\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfmaker", "logs", "job-1", "--home", str(home), "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=sigint_default,  # the test stops it with SIGINT
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def saw(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return text in seen

    try:
        wait_until(lambda: saw("first"), timeout=30, what="the existing line")
        with open(log, "a") as out:
            out.write("second\n")
            out.flush()
            wait_until(lambda: saw("second"), timeout=30, what="an appended line")
            out.write("half")
            out.flush()
            rotate(log, 2)
            out.write(" a line\nthird\n")
        wait_until(lambda: saw("third"), timeout=30, what="a line after the rotation")
        assert seen[0] == "==> logs/training-jobs/job-1.log <==" and seen.count("first") == 1
        assert seen[-2:] == [" a line", "third"], seen  # read from the start of the rotated file
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        reader.join(30)
        errors = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0
    assert "Traceback" not in errors


def test_logs_follow_picks_up_instances_that_start_later(tmp_path: Path) -> None:
    """Following an endpoint with no log yet waits; each instance's log is printed under its header as it
    appears."""
    home = tmp_path / "home"
    (home / "logs" / "endpoints").mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfmaker", "logs", "ep", "--home", str(home), "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=sigint_default,  # the test stops it with SIGINT
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def saw(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return text in seen

    try:
        directory = home / "logs" / "endpoints" / "EP"  # endpoint names compare case-insensitively
        directory.mkdir()
        (directory / "i-1.log").write_text("one starts\n")
        wait_until(lambda: saw("one starts"), timeout=30, what="the first instance's log")
        (directory / "i-2.log").write_text("two starts\n")
        wait_until(lambda: saw("two starts"), timeout=30, what="the second instance's log")
        assert seen == [
            "==> logs/endpoints/EP/i-1.log <==",
            "one starts",
            "==> logs/endpoints/EP/i-2.log <==",
            "two starts",
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        reader.join(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0
