"""The Hub, hermetically: the real huggingface_hub client against `grok1 serve` on 127.0.0.1."""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from converter.generate import generate_checkpoint
from converter.layouts.xai import XaiCheckpoint, value_payloads, write_leaf
from converter.model.config import Grok1Config
from tests.conftest import file_digests

GROK1 = [sys.executable, "-m", "grok1"]


class Server:
    def __init__(self, root, tmp, rate=0):
        self.root, self.log = root, tmp / f"serve-{time.time_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [*GROK1, "serve", str(root), "--port", "0", "--rate-limit", str(rate)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, "GROK1_SERVE_LOG": "1"})
        line = self.proc.stdout.readline()
        self.url = re.search(r"http://\S+", line).group(0)
        self.port = int(self.url.rsplit(":", 1)[1])

    def gets(self):
        return len(re.findall(r'"GET /[^ ]*/resolve/', self.log.read_text()))

    def stop(self):
        self.proc.terminate()  # SIGTERM: a test run started in the background ignores SIGINT
        self.proc.wait(timeout=10)


def env_for(server, tmp):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
            "HF_ENDPOINT": server.url, "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def grok1(server, tmp, *args, check=None):
    result = subprocess.run([*GROK1, *map(str, args)], env=env_for(server, tmp),
                            capture_output=True, text=True)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def digests(folder):
    return file_digests(folder, skip=lambda path: ".cache" in path.parts
                        or path.name.startswith("grok1-"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    root = tmp / "hub"
    generate_checkpoint(root / "xai-org" / "grok-1", Grok1Config.preset("small"), seed=5,
                        quiet=True)
    server = Server(root, tmp)
    yield server, tmp
    server.stop()


def test_download_then_rerun_downloads_nothing(hub):
    server, tmp = hub
    dst = tmp / "dl"
    plan = grok1(server, tmp, "download", "--local-dir", dst, "--dry-run", "--json", check=0)
    assert json.loads(plan.stdout)["present"] == 0
    grok1(server, tmp, "download", "--local-dir", dst, check=0)
    assert digests(dst) == digests(server.root / "xai-org" / "grok-1")
    record = json.loads((dst / "grok1-download.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    before = server.gets()
    again = grok1(server, tmp, "download", "--local-dir", dst, "--json", check=0)
    assert json.loads(again.stdout)["downloaded"] == 0
    assert server.gets() == before


def test_corrupted_file_is_caught_by_sha256(hub):
    server, tmp = hub
    dst = tmp / "corrupt"
    grok1(server, tmp, "download", "--local-dir", dst, check=0)
    victim = dst / "ckpt-0" / "tensor00004_000"
    expected = digests(server.root / "xai-org" / "grok-1")

    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    # silent corruption (same size, same mtime): huggingface_hub trusts the file, sha256 does not
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    bad = grok1(server, tmp, "download", "--local-dir", dst, check=2)
    assert "sha256 mismatch" in bad.stderr and "ckpt-0/tensor00004_000" in bad.stderr
    assert not victim.exists()
    grok1(server, tmp, "download", "--local-dir", dst, check=0)
    assert digests(dst) == expected


def test_killed_download_resumes(hub, tmp_path):
    server, _ = hub
    slow = Server(server.root, tmp_path, rate=1 << 20)
    try:
        dst = tmp_path / "dl"
        proc = subprocess.Popen([*GROK1, "download", "--local-dir", str(dst), "--quiet"],
                                env=env_for(slow, tmp_path))
        time.sleep(2.5)
        assert proc.poll() is None, "the download finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert digests(dst) != digests(server.root / "xai-org" / "grok-1")
        grok1(slow, tmp_path, "download", "--local-dir", dst, check=0)
        assert digests(dst) == digests(server.root / "xai-org" / "grok-1")
    finally:
        slow.stop()


def test_unknown_repo_revision_and_network_errors(hub):
    server, tmp = hub
    missing = grok1(server, tmp, "download", "--repo", "nobody/nothing", "--local-dir",
                    tmp / "x", check=2)
    assert "nobody/nothing: repository not found" in missing.stderr
    revision = grok1(server, tmp, "download", "--revision", "v9", "--local-dir", tmp / "x",
                     check=2)
    assert "revision 'v9' not found" in revision.stderr
    offline = grok1(server, tmp, "download", "--endpoint", "http://127.0.0.1:9",
                    "--local-dir", tmp / "x", check=2)
    assert "network error" in offline.stderr
    for result in (missing, revision, offline):
        assert len(result.stderr.strip().splitlines()) == 1


def raw_request(server, method, path, body=b""):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    return response.status, response.read()


def test_server_refuses_paths_outside_and_bad_uploads(hub):
    server, _ = hub
    for path in ("/xai-org/grok-1/resolve/main/../../../etc/passwd",
                 "/xai-org/grok-1/resolve/main/%2e%2e/%2e%2e/config.json",
                 "/xai-org/grok-1/resolve/main/.cache/x"):
        status, _ = raw_request(server, "GET", path)
        assert status in (400, 404), path
    status, body = raw_request(server, "PUT", "/lfs-upload/" + "0" * 64, b"not matching")
    assert status == 400 and b"sha256 mismatch" in body
    status, _ = raw_request(server, "GET", "/xai-org/grok-1/resolve/main/config.json")
    assert status == 200


def test_upload_twice_changes_nothing_and_card_holds_report(hub, upstream):
    server, tmp = hub
    folder = tmp / "to-upload"
    subprocess.run([*GROK1, "convert", str(upstream), str(folder), "--dtype", "int8",
                    "--quiet"], check=True)
    (folder / "verification_report.md").write_text(
        "## Verification\n\nResult: **passed**\n\n| metric | value |\n| --- | ---: |\n"
        "| KL(ref||cand) mean | 0 |\n")
    first = grok1(server, tmp, "upload", folder, "--repo", "me/tiny-int8", "--json", check=0)
    repo = server.root / "me" / "tiny-int8"
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nbase_model: xai-org/grok-1\n")
    assert "license: apache-2.0" in card and "| KL(ref||cand) mean | 0 |" in card
    assert "compressed-tensors pack-quantized, int8" in card
    assert digests(repo) == {k: v for k, v in digests(folder).items()}
    stamps = {p: p.stat().st_mtime_ns for p in repo.rglob("*")}
    second = grok1(server, tmp, "upload", folder, "--repo", "me/tiny-int8", "--json", check=0)
    assert json.loads(second.stdout)["commit"] == json.loads(first.stdout)["commit"]
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == stamps


def test_pipeline_publishes_verified_weights_and_resumes(hub):
    server, tmp = hub
    work = tmp / "work"
    done = grok1(server, tmp, "pipeline", "--to", "int8", "--work-dir", work, "--upload",
                 "me/grok-1-w8a16", "--seq-len", "24", "--batch", "2", check=0)
    assert "PASS" in done.stdout and "[4/4] upload" in done.stdout
    repo = server.root / "me" / "grok-1-w8a16"
    card = (repo / "README.md").read_text()
    assert "base_model_relation: quantized" in card and "Result: **passed**" in card
    for picture in ("verification_layers.png", "quantization_errors.png"):
        assert f"]({picture})" in card and (repo / picture).read_bytes()[:4] == b"\x89PNG"
    again = grok1(server, tmp, "pipeline", "--to", "int8", "--work-dir", work, "--upload",
                  "me/grok-1-w8a16", "--seq-len", "24", "--batch", "2", check=0)
    assert "[1/4]" not in again.stdout and "[4/4]" not in again.stdout


def test_pipeline_fails_verification_and_uploads_nothing(hub):
    server, tmp = hub
    chaotic = server.root / "xai-org" / "grok-1-chaotic"
    shutil.copytree(server.root / "xai-org" / "grok-1", chaotic)
    checkpoint = XaiCheckpoint.open(chaotic)
    for spec in checkpoint.specs:  # unit post-norms: int4 noise is amplified, as measured
        if spec.role in ("post_attn_norm", "post_moe_norm"):
            value = np.asarray(checkpoint.read(spec)) / np.float32(0.3)
            write_leaf(checkpoint.path_of(spec), spec, value_payloads(value))
    failed = grok1(server, tmp, "pipeline", "--to", "int4,hf-f32", "--repo",
                   "xai-org/grok-1-chaotic", "--work-dir", tmp / "work-fail", "--upload",
                   "me/chaotic-{to}", "--seq-len", "48", "--batch", "4", check=1)
    assert "verification failed" in failed.stderr and "nothing uploaded" in failed.stderr
    assert "output-int4" in failed.stderr and "output-hf-f32" not in failed.stderr
    assert not (server.root / "me" / "chaotic-int4").exists()
    assert (server.root / "me" / "chaotic-hf-f32" / "README.md").is_file()  # the next one went on


def test_pipeline_makes_several_targets_from_one_download(hub):
    server, tmp = hub
    work = tmp / "work-several"
    before = server.gets()
    done = grok1(server, tmp, "pipeline", "--to", "hf-f32,GGUF-q8_0", "--work-dir", work,
                 "--upload", "me/several-{to}", "--seq-len", "16", "--batch", "2", check=0)
    fetched = server.gets() - before
    assert done.stdout.count("[1/4] download") == 1 and done.stdout.count("[4/4] upload") == 2
    assert "pipeline hf-f32: done (download, convert, verify, upload)" in done.stdout
    assert (work / "output-gguf-Q8_0" / "grok-1-Q8_0.gguf").is_file()
    for target in ("hf-f32", "gguf-Q8_0"):
        card = (server.root / "me" / f"several-{target}" / "README.md").read_text()
        assert "Result: **passed**" in card
    more = grok1(server, tmp, "pipeline", "--to", "hf-f32,hf-release-int8", "--work-dir", work,
                 "--upload", "me/several-{to}", "--seq-len", "16", "--batch", "2", check=0)
    assert server.gets() - before == fetched  # the added target reused the download
    assert "[1/4]" not in more.stdout and more.stdout.count("[2/4]") == 1
    assert "profile: lossless" in more.stdout
    renamed = grok1(server, tmp, "pipeline", "--to", "hf-f32", "--names", "sglang",
                    "--work-dir", work, "--seq-len", "16", "--batch", "2", check=2)
    assert "hf-f32 was made there with --names hpcai" in renamed.stderr
    longer = grok1(server, tmp, "pipeline", "--to", "hf-f32", "--work-dir", work, check=2)
    assert "seq_len 16 (now 64), batch 2 (now 4)" in longer.stderr


def test_pipeline_from_a_local_copy_checks_its_hashes(hub):
    server, tmp = hub
    copy = tmp / "local-release"
    grok1(server, tmp, "download", "--local-dir", copy, "--quiet", check=0)
    before = server.gets()
    done = grok1(server, tmp, "pipeline", "--to", "hf-f32", "--source", copy, "--work-dir",
                 tmp / "work-local", "--seq-len", "16", "--batch", "2", check=0)
    assert server.gets() == before and not (tmp / "work-local" / "source").exists()
    assert f"[1/4] check {copy}" in done.stdout and "PASS" in done.stdout
    provenance = json.loads((tmp / "work-local" / "output-hf-f32" / "grok1-provenance.json")
                            .read_text())
    record = json.loads((copy / "grok1-download.json").read_text())
    assert provenance["commit"] == record["commit"] and provenance["repo"] == "xai-org/grok-1"
    shard = next(p for p in sorted((copy / "ckpt-0").glob("tensor*")) if p.stat().st_size > 64)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    flipped = grok1(server, tmp, "pipeline", "--to", "hf-f32", "--source", copy, "--work-dir",
                    tmp / "work-flipped", check=2)
    assert flipped.stderr.count("\n") == 1 and f"{shard}: sha256" in flipped.stderr
    (copy / "grok1-download.json").unlink()
    unrecorded = grok1(server, tmp, "pipeline", "--to", "hf-f32", "--source", copy,
                       "--work-dir", tmp / "work-unrecorded", check=2)
    assert "grok1 download --local-dir" in unrecorded.stderr


def test_upload_as_pull_request(hub, upstream):
    server, tmp = hub
    folder = tmp / "pr-upload"
    subprocess.run([*GROK1, "convert", str(upstream), str(folder), "--dtype", "f32",
                    "--quiet"], check=True)
    grok1(server, tmp, "upload", folder, "--repo", "me/pr-target", check=0)
    (folder / "extra.json").write_text("{}")
    result = grok1(server, tmp, "upload", folder, "--repo", "me/pr-target", "--create-pr",
                   "--json", check=0)
    assert json.loads(result.stdout)["pr_url"].endswith("/me/pr-target/discussions/1")
    assert not (server.root / "me" / "pr-target" / "extra.json").exists()


@pytest.mark.parametrize(("status", "words"), [(401, "access denied (401); set HF_TOKEN"),
                                               (403, "access denied (403)"),
                                               (500, "Hub error 500")])
def test_http_errors_become_one_line_messages(status, words):
    httpx2 = pytest.importorskip("httpx2")  # huggingface_hub 2.x's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    from converter.hub.client import _hub_error
    response = httpx2.Response(status, request=httpx2.Request("GET", "http://127.0.0.1/x"))
    error = _hub_error(HfHubHTTPError("boom", response=response), "org/repo", None)
    assert words in str(error) and "\n" not in str(error)


def test_upload_refuses_what_the_toolchain_did_not_write_unless_told(hub, tmp_path):
    server, tmp = hub
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    refused = grok1(server, tmp, "upload", folder, "--repo", "me/notes", check=2)
    assert "not a finished output of grok1-toolchain" in refused.stderr
    assert "--any-folder" in refused.stderr and not (server.root / "me" / "notes").exists()
    forced = grok1(server, tmp, "upload", folder, "--repo", "me/notes", "--any-folder",
                   check=0)
    assert "has no verification report" in forced.stderr


def test_upload_to_an_lfs_only_hub_says_what_to_set(hub, upstream, tmp_path):
    server, tmp = hub
    folder = tmp_path / "out"
    subprocess.run([*GROK1, "convert", str(upstream), str(folder), "--dtype", "f32",
                    "--quiet"], check=True)
    env = {k: v for k, v in env_for(server, tmp).items() if k != "HF_HUB_DISABLE_XET"}
    result = subprocess.run([*GROK1, "upload", str(folder), "--repo", "me/xet"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "set HF_HUB_DISABLE_XET=1" in result.stderr


def test_cards_name_the_command_that_made_the_weights_and_the_chain(hub, tmp_path):
    server, tmp = hub
    source = tmp / "src"
    grok1(server, tmp, "download", "--local-dir", source, "--quiet", check=0)
    grok1(server, tmp, "quantize", source, tmp_path / "int4", "--scheme", "int4", "--quiet",
          check=0)
    again = grok1(server, tmp, "convert", tmp_path / "int4", tmp_path / "bf16", "--quiet",
                  check=0)
    assert "is already lossy" in again.stderr and "--scheme int4" in again.stderr
    grok1(server, tmp, "upload", tmp_path / "bf16", "--repo", "me/chain", check=0)
    card = (server.root / "me" / "chain" / "README.md").read_text()
    source_line = next(line for line in card.splitlines() if line.startswith("- Source:"))
    assert "`xai-org/grok-1` at commit `" in source_line and "unknown" not in source_line
    assert "through `grok1 quantize src int4 --scheme int4 --quiet`" in source_line
    command = next(line for line in card.splitlines() if line.startswith("- Command:"))
    assert command == "- Command: `grok1 convert int4 bf16 --quiet`"
