"""`grok1 serve`, `download` and `upload` under hostile and broken input."""

import http.client
import json
import os
import shutil
import socket
import threading

import pytest
from click.testing import CliRunner

from converter.generate import generate_checkpoint
from converter.hub.server import HubStore, make_server, parse_range
from converter.model.config import Grok1Config
from grok1.cli import main
from tests.conftest import bad_input
from tests.test_hub import Server, env_for, grok1


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    root = tmp / "hub"
    generate_checkpoint(root / "xai-org" / "grok-1", Grok1Config.preset("tiny", layers=2),
                        seed=5, quiet=True)
    server = Server(root, tmp)
    yield server, tmp
    server.stop()


def request(server, method, path, body=b"", headers=None, raw_length=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.putheader("Content-Length", raw_length if raw_length is not None else str(len(body)))
    conn.endheaders()
    if body:
        conn.send(body)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


CONFIG = "/xai-org/grok-1/resolve/main/config.json"


def test_ranges_follow_rfc_9110(hub):
    server, _ = hub
    size = (server.root / "xai-org" / "grok-1" / "config.json").stat().st_size
    status, headers, body = request(server, "GET", CONFIG, headers={"Range": "bytes=0-999999"})
    assert (status, headers["Content-Length"], len(body)) == (206, str(size), size)
    assert headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    status, headers, body = request(server, "GET", CONFIG, headers={"Range": "bytes=5-2"})
    assert status == 200 and len(body) == size
    status, _, body = request(server, "GET", CONFIG, headers={"Range": "bytes=abc-def"})
    assert status == 200 and len(body) == size
    status, headers, _ = request(server, "GET", CONFIG, headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, headers, body = request(server, "GET", CONFIG, headers={"Range": "bytes=-10"})
    assert status == 206 and len(body) == 10
    from converter.errors import HubHttpError
    with pytest.raises(HubHttpError, match="selects nothing"):
        parse_range("bytes=-0", 5)
    assert parse_range(None, 5) is None and parse_range("bytes=1-", 5) == (1, 4)


@pytest.mark.parametrize(("method", "path", "body", "length"), [
    ("GET", "/xai-org/grok-1/resolve/main/config%00.json", b"", None),
    ("POST", "/api/repos/create", b"{not json", None),
    ("POST", "/api/models/xai-org/grok-1/preupload/main", b"[1, 2", None),
    ("POST", "/api/models/xai-org/grok-1/commit/main", b"{\"key\": ", None),
    ("POST", "/api/repos/create", b"", "abc"),
    ("POST", "/api/repos/create", b"", "-5"),
    ("POST", "/api/repos/create", b"", str(1 << 40)),
    ("POST", "/xai-org/grok-1.git/info/lfs/objects/batch", b"{\"objects\": 5}", None),
    ("POST", "/api/repos/create", b"[" * 100_000 + b"]" * 100_000, None),
    ("POST", "/api/models/xai-org/grok-1/commit/main", b'{"a": ' + b"9" * 5000 + b"}", None),
    ("GET", "/xai-org/grok-1/resolve/main/" + "x" * 8192, b"", None),
    ("GET", "/api/models/xai-org/" + "y" * 8192 + "/revision/main", b"", None),
    ("GET", "/api/models/%E2%82%AC/%E6%97%A5/revision/main", b"", None),
])
def test_malformed_requests_get_a_4xx(hub, method, path, body, length):
    server, _ = hub
    status, _, answer = request(server, method, path, body, raw_length=length)
    assert 400 <= status < 500, (status, answer)
    assert request(server, "GET", CONFIG)[0] == 200  # the server is still up


def test_links_and_fifos_are_not_served(hub, tmp_path):
    server, _ = hub
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("secret")
    (server.root / "evil").mkdir(exist_ok=True)
    (server.root / "evil" / "repo").symlink_to(outside)
    status, _, _ = request(server, "GET", "/evil/repo/resolve/main/key.txt")
    assert status in (403, 404)
    repo = server.root / "xai-org" / "grok-1"
    (repo / "leak.txt").symlink_to(outside / "key.txt")
    os.mkfifo(repo / "pipe.json")
    try:
        status, _, body = request(server, "GET", "/api/models/xai-org/grok-1/tree/main?recursive=1")
        listed = {e["path"] for e in json.loads(body)}
        assert status == 200 and "leak.txt" not in listed and "pipe.json" not in listed
        for name in ("leak.txt", "pipe.json"):
            assert request(server, "GET", f"/xai-org/grok-1/resolve/main/{name}")[0] in (403, 404)
    finally:
        (repo / "leak.txt").unlink()
        (repo / "pipe.json").unlink()


def test_commit_cannot_delete_the_repository(hub):
    server, _ = hub
    body = (json.dumps({"key": "header", "value": {"summary": "x"}}) + "\n" + json.dumps(
        {"key": "deletedFolder", "value": {"path": "."}})).encode()
    status, _, _ = request(server, "POST", "/api/models/xai-org/grok-1/commit/main", body)
    assert status == 400
    assert (server.root / "xai-org" / "grok-1" / "config.json").is_file()


def test_writes_need_a_token_beyond_loopback(tmp_path):
    for token, header, expected in ((None, None, 403), ("s3cret", None, 401),
                                    ("s3cret", "Bearer s3cret", 200)):
        server = make_server(tmp_path / f"root-{expected}", "0.0.0.0", 0, token=token)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            headers = {"Authorization": header} if header else {}
            conn.request("POST", "/api/repos/create", body=b'{"name": "x"}', headers=headers)
            assert conn.getresponse().status == expected
        finally:
            server.shutdown()
            server.server_close()


def test_hash_cache_sees_an_edit_that_restores_size_and_mtime(tmp_path):
    store = HubStore(tmp_path)
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    first = store.hashes(path)
    info = path.stat()
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert store.hashes(path) != first


def test_download_checks_non_lfs_files_and_counts_refetches(hub):
    server, tmp = hub
    dst = tmp / "dl"
    grok1(server, tmp, "download", "--local-dir", dst, check=0)
    config = dst / "config.json"
    data = config.read_text()
    stat = config.stat()
    config.write_text(data.replace('"layers": 2', '"layers": 3'))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    bad = grok1(server, tmp, "download", "--local-dir", dst, check=2)
    assert "config.json" in bad.stderr and not config.exists()
    again = grok1(server, tmp, "download", "--local-dir", dst, "--json", check=0)
    assert json.loads(again.stdout)["downloaded"] == 1
    assert config.read_text() == data


def test_download_into_a_full_disk(hub, monkeypatch):
    server, tmp = hub
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 1000))
    assert "GB free" in bad_input("download", "--local-dir", tmp / "full", "--quiet",
                                  "--endpoint", server.url)
    assert not (tmp / "full").exists() or not any((tmp / "full").rglob("*.safetensors"))


@pytest.mark.parametrize("command", ["download", "upload"])
def test_bad_repo_ids(tmp_path, command):
    args = (["download", "--local-dir", tmp_path / "x"] if command == "download"
            else ["upload", tmp_path])
    assert "--repo" in bad_input(*args, "--repo", "../x")


def test_upload_refuses_links_and_writes_no_card_on_failure(hub, tmp_path, upstream):
    server, tmp = hub
    folder = tmp_path / "out"
    CliRunner().invoke(main, ["convert", str(upstream), str(folder), "--dtype", "f32",
                              "--quiet"])
    (tmp_path / "secret.txt").write_text("private")
    (folder / "notes.txt").symlink_to(tmp_path / "secret.txt")
    env = env_for(server, tmp)
    refused = grok1(server, tmp, "upload", folder, "--repo", "me/links", check=2)
    assert "symbolic link" in refused.stderr
    assert not (server.root / "me" / "links").exists()
    (folder / "notes.txt").unlink()
    offline = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    import subprocess
    import sys
    failed = subprocess.run([sys.executable, "-m", "grok1", "upload", str(folder), "--repo",
                             "me/offline"], env=offline, capture_output=True, text=True)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert not (folder / "README.md").exists()


def test_upload_with_a_bad_quantization_config(hub, tmp_path, upstream):
    server, tmp = hub
    folder = tmp_path / "q"
    CliRunner().invoke(main, ["convert", str(upstream), str(folder), "--dtype", "int8",
                              "--quiet"])
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"g": {"targets": ["Linear"]}}
    (folder / "config.json").write_text(json.dumps(config))
    result = grok1(server, tmp, "upload", folder, "--repo", "me/badq", check=2)
    assert "quantization config" in result.stderr and "Traceback" not in result.stderr


def test_card_escapes_pipes_and_records_no_local_path(hub, tmp_path, upstream):
    server, tmp = hub
    from converter.layouts import open_checkpoint
    from verify.profiles import PROFILES
    from verify.report import format_markdown
    from verify.run import run_verification
    from verify.tokens import random_tokens

    folder = tmp_path / "card"
    CliRunner().invoke(main, ["convert", str(upstream), str(folder), "--dtype", "f32",
                              "--quiet"])
    reader = open_checkpoint(upstream)
    result = run_verification(reader, reader, random_tokens(256, batch=1, seq_len=8, seed=0),
                              thresholds=PROFILES["lossless"])
    (folder / "verification_report.md").write_text(format_markdown(result))
    grok1(server, tmp, "upload", folder, "--repo", "me/card", check=0)
    card = (server.root / "me" / "card" / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| max ")]
    assert rows == [rows[0]] and rows[0].count(" | ") == 1, rows  # two cells, not four
    assert "max \\|logit diff\\|" in rows[0]
    command = next(line for line in card.splitlines() if line.startswith("- Command:"))
    # the command that made the weights, not the upload's
    assert command == "- Command: `grok1 convert grok1-tiny-upstream card --dtype f32 --quiet`"
    assert str(tmp_path) not in card and os.sep + "bin" + os.sep not in card
    assert (folder / "README.md").read_text() == card


def test_serve_on_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"127.0.0.1:{port}" in bad_input("serve", tmp_path, "--port", port)


def test_a_five_thousand_digit_range(hub):
    server, _ = hub
    size = (server.root / "xai-org" / "grok-1" / "config.json").stat().st_size
    status, _, body = request(server, "GET", CONFIG, headers={"Range": f"bytes=0-{'9' * 5000}"})
    assert status == 206 and len(body) == size
    status, _, _ = request(server, "GET", CONFIG, headers={"Range": f"bytes={'9' * 5000}-"})
    assert status == 416


def test_an_error_message_outside_latin_1_is_escaped(hub):
    server, _ = hub
    status, headers, body = request(server, "GET", "/api/models/%E2%82%AC/x/revision/main")
    assert 400 <= status < 500 and "\\u20ac" in headers["X-Error-Message"]
    assert "\u20ac" in json.loads(body)["error"]


def test_errors_say_the_connection_closes_and_a_reused_client_recovers(hub):
    server, _ = hub
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(50):
        conn.request("GET", "/api/models/nobody/nothing/revision/main")
        response = conn.getresponse()
        response.read()
        assert response.status == 404 and response.getheader("Connection") == "close"
        conn.request("GET", CONFIG)
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.close()


class _Liar(threading.Thread):
    """A Hub that answers the revision correctly and then `listing` (raw bytes) for the tree,
    or redirects every request to itself forever."""

    def __init__(self, listing=None):
        import http.server

        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if liar.listing is None:
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = (json.dumps({"id": "a/b", "sha": "0" * 40}).encode()
                        if "/revision/" in self.path else liar.listing)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(daemon=True)
        self.listing = listing
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self):
        self.server.serve_forever()


@pytest.mark.parametrize("listing", [
    None, b"not json", b'"a string"', b'[{"path": 5, "size": "x", "type": "file"}]',
    b"[" * 100_000 + b"]" * 100_000, b'[{"type": "file"}]',
    b'[{"path": "ckpt-0/a", "size": ' + b"9" * 5000 + b', "type": "file", "oid": "x"}]',
], ids=["redirect loop", "not json", "a string", "wrong types", "nested", "no path",
        "5000 digits"])
def test_a_hub_that_answers_nonsense_is_one_line(tmp_path, monkeypatch, listing):
    liar = _Liar(listing)
    liar.start()
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        line = bad_input("download", "--repo", "a/b", "--local-dir", tmp_path / "d",
                         "--endpoint", liar.url)
    finally:
        liar.server.shutdown()
    assert "a/b" in line
