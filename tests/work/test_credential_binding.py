"""A credential goes only to the host it is bound to, over https (issue 23, part 5), against real servers.

A tiny HTTPS server on loopback (a self-signed certificate for 127.0.0.1 and localhost, trusted through
`GIT_SSL_CA_FILE`) answers every request 401 with a Basic challenge and records what it received, so git asks
for the credential and sends it if the worker gave it one. The same server is reachable as `127.0.0.1` and as
`localhost`: a credential bound to `127.0.0.1` must reach it under that name and never under the other, and
never over plain http, whatever the job says.
"""

from __future__ import annotations

import base64
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.work.checkout import checkout, plan_checkout
from backends.work.errors import InfrastructureError
from common.legacy import Repository
from common.settings import Settings

SECRET = "bound-secret-7731"
USER = "deploy"


@dataclass
class Recorder:
    """What the server received: (host header, path, Authorization header or '')."""

    port: int
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def authorizations(self) -> list[str]:
        return [auth for _host, _path, auth in self.requests if auth]


def _serve(server: http.server.HTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _handler(recorder: Recorder) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            recorder.requests.append((self.headers.get("Host", ""), self.path, self.headers.get("Authorization", "")))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def https_server(certificate: tuple[Path, Path]) -> Iterator[Recorder]:
    recorder = Recorder(0)
    server = http.server.HTTPServer(("127.0.0.1", 0), _handler(recorder))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    recorder.port = server.server_address[1]
    _serve(server)
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_server() -> Iterator[Recorder]:
    recorder = Recorder(0)
    server = http.server.HTTPServer(("127.0.0.1", 0), _handler(recorder))
    recorder.port = server.server_address[1]
    _serve(server)
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(isolated_env: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GATEWAY_SECRET_COURSE_GIT", f"{USER}:{SECRET}")
    return Settings(git_ssl_ca_file=certificate[0])  # type: ignore[call-arg]


def _fetch(url: str, hosts: list[str] | None, settings: Settings, tmp_path: Path) -> None:
    repo = Repository(url=url, commit="0" * 40, path="week1", credential="COURSE_GIT", credential_hosts=hosts)
    with pytest.raises(InfrastructureError):  # the server serves no repository: only what it received matters
        checkout(plan_checkout(repo, "student", settings), tmp_path / "dest", settings)


EXPECTED = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()


def test_the_bound_host_gets_the_credential_over_https(https_server: Recorder, settings: Settings, tmp_path: Path):
    _fetch(f"https://127.0.0.1:{https_server.port}/course/repo.git", ["127.0.0.1"], settings, tmp_path)
    assert https_server.requests, "git reached the server"
    assert EXPECTED in https_server.authorizations()  # the probe works: the bound host does get it


def test_another_host_gets_no_credential(https_server: Recorder, settings: Settings, tmp_path: Path) -> None:
    """The same server under another name (a student's own server): git asks, the worker gives nothing."""
    _fetch(f"https://localhost:{https_server.port}/student/repo.git", ["127.0.0.1"], settings, tmp_path)
    assert https_server.requests, "git reached the server"
    assert https_server.authorizations() == []


def test_a_job_that_names_no_hosts_sends_no_credential(https_server: Recorder, settings: Settings, tmp_path: Path):
    _fetch(f"https://127.0.0.1:{https_server.port}/course/repo.git", None, settings, tmp_path)
    assert https_server.requests and https_server.authorizations() == []


def test_plain_http_never_carries_one(http_server: Recorder, settings: Settings, tmp_path: Path) -> None:
    _fetch(f"http://127.0.0.1:{http_server.port}/course/repo.git", ["127.0.0.1"], settings, tmp_path)
    assert http_server.requests, "git reached the server"
    assert http_server.authorizations() == []


def test_the_secret_store_may_bind_hosts_too(
    https_server: Recorder, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "secrets.yaml"
    store.write_text(f"course-git: {{username: {USER}, password: {SECRET}, hosts: [127.0.0.1]}}\n")
    monkeypatch.delenv("GATEWAY_SECRET_COURSE_GIT")
    settings = settings.model_copy(update={"secrets_file": store})
    repo = Repository(url=f"https://127.0.0.1:{https_server.port}/c.git", commit="0" * 40, credential="course-git")
    with pytest.raises(InfrastructureError):
        checkout(plan_checkout(repo, "reference", settings), tmp_path / "dest", settings)
    assert EXPECTED in https_server.authorizations()
