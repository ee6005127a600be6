"""Sign-in: with `--auth`, every route the server registers answers 401 without credentials
and works with them; a non-loopback `--host` without `--auth` (or `--no-auth`) refuses to
start; credentials files keep no password in the clear."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, make_collection
from routes import filled, registered_routes
from typer.testing import CliRunner

from groco.app.auth import (
    AuthError,
    Credentials,
    check_password,
    hash_password,
    is_loopback,
    set_password,
)
from groco.cli import app as cli

USER, PASSWORD = "alice", "correct horse"


TLS: dict = {}
"""The module's server's certificate (``cafile``), when it serves https."""


def _status(url: str, method: str = "GET", auth: tuple[str, str] | None = None,
            data: bytes | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, method=method, data=data)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=TLS["cafile"])
        context.check_hostname = False
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.fixture(scope="module")
def signed_in_server(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with sign-in, over https with a self-signed certificate where openssl can
    make one (as `groco serve --auth F --ssl-certfile C --ssl-keyfile K` runs it)."""
    from groco.app.web import launch_app
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("auth")
    images = make_collection(base / "images", classes=2, per_class=5, size=32)
    build_index_dir(images, encoder_file, base / "index", batch_size=8, progress=False)
    set_password(base / "users", USER, PASSWORD)
    tls = {}
    if shutil.which("openssl"):
        key, cert = base / "key.pem", base / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_verify": False}
        TLS["cafile"] = str(cert)
    app, url = launch_app(base / "index", port=free_port(), block=False,
                          credentials=Credentials.read(base / "users"), **tls)
    assert url.startswith("https://" if tls else "http://")
    yield app, url.rstrip("/"), images, base / "index"
    app.close()


def test_no_route_answers_without_credentials(signed_in_server):
    app, url, _, _ = signed_in_server
    routes = registered_routes(app)
    paths = {path for _, path in routes}
    assert {"/", "/groco/api/search", "/gradio_api/queue/join", "/gradio_api/upload",
            "/gradio_api/file={path_or_url:path}", "/gradio_api/info"} <= paths
    assert len(routes) > 60
    answered = []
    for method, path in routes + [("GET", "/no-such-route"), ("POST", "/gradio_api/x")]:
        if method == "WEBSOCKET":
            continue
        status, body, headers = _status(url + filled(path), method,
                                        data=b"{}" if method == "POST" else None)
        if status != 401:
            answered.append((method, path, status))
        elif method != "HEAD":
            assert json.loads(body)["error"] == "sign in required"
            assert headers["www-authenticate"].startswith("Basic")
    assert not answered
    for method, path in [("GET", "/"), ("GET", "/gradio_api/info")]:
        assert _status(url + path, method, auth=(USER, "wrong"))[0] == 401
        assert _status(url + path, method, auth=("mallory", PASSWORD))[0] == 401


def test_every_route_works_with_credentials(signed_in_server):
    _, url, images, index = signed_in_server
    auth = (USER, PASSWORD)
    assert _status(url + "/", auth=auth)[0] == 200
    assert _status(url + "/gradio_api/info", auth=auth)[0] == 200
    query = (images / "class1" / "img002.png").read_bytes()
    status, body, _ = _status(url + "/groco/api/search?k=3", "POST", auth, query)
    assert status == 200
    found = json.loads(body)["results"]
    assert found[0]["relpath"] == "class1/img002.png"
    thumbnail = found[0]["thumbnail"]
    assert _status(url + thumbnail, auth=auth)[0] == 200
    assert _status(url + thumbnail)[0] == 401
    assert _status(url + "/groco/api/browse?page=1", auth=auth)[0] == 200

    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(url + "/", verbose=False, ssl_verify=False,
                                  httpx_kwargs={"auth": auth})
    _, _, found = client.predict(gradio_client.handle_file(str(images / "class0/img000.png")),
                           3, "all", api_name="/search")
    assert [r["relpath"] for r in found][:1] == ["class0/img000.png"]
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the point is that it fails
        gradio_client.Client(url + "/", verbose=False, ssl_verify=False)


def test_a_websocket_without_credentials_is_refused(signed_in_server):
    _, url, _, _ = signed_in_server
    host, port = url.split("://")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        s = plain
        if url.startswith("https://"):
            context = ssl.create_default_context(cafile=TLS["cafile"])
            context.check_hostname = False
            s = context.wrap_socket(plain)
        s.sendall(b"GET /gradio_api/anything HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        answer = s.recv(200)
    assert not answer.startswith(b"HTTP/1.1 101"), answer


def test_a_non_loopback_host_needs_auth_or_no_auth(tmp_path: Path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-index"), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "--auth" in result.output and "--no-auth" in result.output
    assert len(result.output.strip().splitlines()) == 1
    both = CliRunner().invoke(cli, ["serve", str(tmp_path), "--auth", "x", "--no-auth"])
    assert both.exit_code == 1 and "contradict" in both.output
    plain = tmp_path / "plain"
    plain.write_text("alice:hunter2\n")
    refused = CliRunner().invoke(cli, ["serve", str(tmp_path), "--host", "0.0.0.0",
                                       "--auth", str(plain)])
    assert refused.exit_code == 1 and "not hashed" in refused.output
    assert "Traceback" not in refused.output


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.org", ""]))


def test_passwd_writes_a_hash_and_replaces_a_users_line(tmp_path: Path):
    users = tmp_path / "users"
    runner = CliRunner()
    first = runner.invoke(cli, ["passwd", str(users), USER, "--password-stdin"],
                          input=PASSWORD + "\n")
    assert first.exit_code == 0 and "added" in first.output
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert PASSWORD not in users.read_text()
    runner.invoke(cli, ["passwd", str(users), "bob", "--password-stdin"], input="b\n")
    again = runner.invoke(cli, ["passwd", str(users), USER, "--password-stdin"], input="new\n")
    assert again.exit_code == 0 and "changed" in again.output
    credentials = Credentials.read(users)
    assert set(credentials.users) == {USER, "bob"}
    assert credentials.check(USER, "new") and not credentials.check(USER, PASSWORD)
    assert credentials.check("bob", "b") and not credentials.check("carol", "b")
    bad = runner.invoke(cli, ["passwd", str(users), "a:b", "--password-stdin"], input="x\n")
    assert bad.exit_code == 1 and bad.output.startswith("error:")


def test_credentials_from_a_file_or_the_environment(tmp_path: Path, monkeypatch):
    hashed = hash_password(PASSWORD, iterations=1000)
    assert check_password(PASSWORD, hashed) and not check_password("x", hashed)
    users = tmp_path / "users"
    users.write_text(f"# who may sign in\n\n{USER}:{hashed}\n")
    assert Credentials.read(users).check(USER, PASSWORD)
    monkeypatch.setenv("GROCO_USERS", f"{USER}:{PASSWORD}\nbob:b:with:colons")
    from_env = Credentials.read("env:GROCO_USERS")
    assert from_env.check(USER, PASSWORD) and from_env.check("bob", "b:with:colons")
    for text, message in [(f"{USER}:{PASSWORD}\n", "not hashed"),
                          ("no-colon\n", "expected user:HASH"),
                          (f"{USER}:pbkdf2_sha256$1$!!$!!\n", "damaged"),
                          ("# only a comment\n", "no user")]:
        users.write_text(text)
        with pytest.raises(AuthError, match=message):
            Credentials.read(users)
    with pytest.raises(AuthError, match="no such credentials file"):
        Credentials.read(tmp_path / "missing")
    with pytest.raises(AuthError, match="not set"):
        Credentials.read("env:GROCO_NO_SUCH_VARIABLE")

