"""Nothing lost: --overwrite and --resume touch only what this toolchain wrote; a run killed at
any moment resumes; a changed source or a damaged finished shard is never kept."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.engine.output import OutputFolder
from grok1.cli import main
from tests.conftest import bad_input, file_digests

GROK1 = [sys.executable, "-m", "grok1"]


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def model(tiny_ckpt, tmp_path):
    folder = tmp_path / "parent" / "model"
    shutil.copytree(tiny_ckpt, folder)
    (tmp_path / "parent" / "notes.txt").write_text("unrelated")
    return folder


@pytest.mark.parametrize("command", [["convert", "{m}", "{m}", "--to", "hf"],
                                     ["quantize", "{m}", "{m}", "--scheme", "int4"],
                                     ["convert", "{m}", "{p}", "--to", "hf"]])
def test_overwrite_never_removes_the_source_or_its_parent(model, command):
    before = file_digests(model.parent)
    args = [a.format(m=model, p=model.parent) for a in command]
    line = bad_input(*args, "--overwrite")
    assert "source" in line
    assert file_digests(model.parent) == before


def test_overwrite_of_an_hf_output_into_itself_and_of_cwd(model, tmp_path, monkeypatch):
    ok("convert", model, tmp_path / "h", "--dtype", "int8")
    before = file_digests(tmp_path / "h")
    assert "source" in bad_input("convert", tmp_path / "h", tmp_path / "h", "--to", "xai",
                                 "--overwrite")
    assert file_digests(tmp_path / "h") == before
    monkeypatch.chdir(model)
    assert "source" in bad_input("convert", ".", ".", "--overwrite")
    assert (model / "ckpt-0").is_dir()


def test_overwrite_refuses_a_folder_it_did_not_write(model, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert "did not write" in bad_input("convert", model, mine, "--overwrite")
    assert (mine / "thesis.tex").read_text() == "years of work"
    ok("convert", model, tmp_path / "out", "--dtype", "f32")
    (tmp_path / "out" / "thesis.tex").write_text("years of work")
    assert "thesis.tex" in bad_input("convert", model, tmp_path / "out", "--overwrite")
    assert (tmp_path / "out" / "thesis.tex").exists()
    (tmp_path / "out" / "thesis.tex").unlink()
    ok("convert", model, tmp_path / "out", "--dtype", "bf16", "--overwrite")


def test_resume_keeps_temporaries_it_did_not_write(model, tmp_path):
    ok("convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size", "2MB")
    manifest_path = tmp_path / "out" / "grok1-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["complete"] = False
    manifest_path.write_text(json.dumps(manifest))
    ours = tmp_path / "out" / f"{shards(tmp_path / 'out')[1]}.0123abcd.incomplete"
    ours.write_bytes(b"half a shard")
    ok("convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size", "2MB", "--resume")
    assert not ours.exists()
    theirs = tmp_path / "out" / "download.0123abcd.incomplete"
    theirs.write_bytes(b"someone else's")
    assert "download.0123abcd.incomplete" in bad_input(
        "convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size", "2MB", "--resume")
    assert theirs.read_bytes() == b"someone else's"


def test_killed_before_the_first_manifest_resumes(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grok1-manifest.json.0badf00d.incomplete").write_text("{")
    ok("convert", model, out, "--dtype", "f32", "--resume")
    ok("convert", model, tmp_path / "clean", "--dtype", "f32")
    skip = {"skip": lambda p: p.name == "grok1-manifest.json"}
    assert file_digests(out, **skip) == file_digests(tmp_path / "clean", **skip)


def shards(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def interrupted(folder):
    """Mark a finished output as interrupted before its index was written."""
    manifest = json.loads((folder / "grok1-manifest.json").read_text())
    manifest["complete"] = False
    (folder / "grok1-manifest.json").write_text(json.dumps(manifest))
    (folder / "model.safetensors.index.json").unlink()


def test_resume_rewrites_a_damaged_finished_shard(model, tmp_path):
    args = ["--dtype", "f32", "--shard-size", "2MB"]
    ok("convert", model, tmp_path / "clean", *args)
    ok("convert", model, tmp_path / "out", *args)
    victim = tmp_path / "out" / shards(tmp_path / "out")[2]
    interrupted(tmp_path / "out")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    summary = CliRunner().invoke(main, ["convert", str(model), str(tmp_path / "out"), *args,
                                        "--resume", "--json", "--quiet"])
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.output)["resumed_units"] == len(shards(tmp_path / "clean")) - 1
    skip = {"skip": lambda p: p.name == "grok1-manifest.json"}
    assert file_digests(tmp_path / "out", **skip) == file_digests(tmp_path / "clean", **skip)


def test_resume_refuses_a_changed_source(model, tmp_path):
    ok("convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size", "2MB")
    interrupted(tmp_path / "out")
    victim = model / "ckpt-0" / "tensor00005_000"
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    line = bad_input("convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size",
                     "2MB", "--resume")
    assert "changed since the interrupted run" in line


def test_corrupt_manifest_is_bad_input(model, tmp_path):
    ok("convert", model, tmp_path / "out", "--dtype", "f32")
    (tmp_path / "out" / "grok1-manifest.json").write_text("{not json")
    assert "grok1-manifest.json" in bad_input("convert", model, tmp_path / "out", "--dtype",
                                              "f32", "--resume")


def test_a_second_run_cannot_race_the_first(model, tmp_path):
    out = OutputFolder(tmp_path / "out")
    out.path.mkdir()
    out.lock()
    try:
        (out.path / "grok1-manifest.json.0badf00d.incomplete").write_text("{")
        assert "another grok1 process" in bad_input("convert", model, out.path, "--resume")
    finally:
        out.unlock()


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"]])
def test_the_lock_comes_before_overwrite_or_resume_touch_anything(model, tmp_path, flags):
    """A second --overwrite/--resume into the folder of a running conversion deletes nothing."""
    ok("convert", model, tmp_path / "out", "--dtype", "f32", "--shard-size", "2MB")
    first = shards(tmp_path / "out")[0]
    interrupted(tmp_path / "out")
    (tmp_path / "out" / f"{first}.0badf00d.incomplete").write_text("x")
    before = file_digests(tmp_path / "out")
    running = OutputFolder(tmp_path / "out")
    running.lock()
    try:
        line = bad_input("convert", model, tmp_path / "out", "--dtype", "f32",
                         "--shard-size", "2MB", *flags)
    finally:
        running.unlock()
    assert "another grok1 process" in line
    assert file_digests(tmp_path / "out") == before


def test_make_tiny_overwrite_waits_for_the_lock_too(tmp_path):
    ok("make-tiny", tmp_path / "m", "--layers", "1")
    before = file_digests(tmp_path / "m")
    running = OutputFolder(tmp_path / "m")
    running.lock()
    try:
        line = bad_input("make-tiny", tmp_path / "m", "--layers", "1", "--overwrite")
    finally:
        running.unlock()
    assert "another grok1 process" in line and file_digests(tmp_path / "m") == before


def test_output_that_is_a_file_or_a_link(model, tmp_path):
    (tmp_path / "file").write_text("x")
    assert "not a folder" in bad_input("convert", model, tmp_path / "file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert "symbolic link" in bad_input("convert", model, tmp_path / "link", "--overwrite")


def _descendants(pid):
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
                frontier.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_parent_and_resume_does_not_race_them(small_ckpt, tmp_path):
    out = tmp_path / "out"
    args = ["convert", str(small_ckpt), str(out), "--dtype", "bf16", "--shard-size", "1MB",
            "--workers", "2", "--quiet"]
    proc = subprocess.Popen([*GROK1, *args])
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid)
        manifest = out / "grok1-manifest.json"
        if len(workers) >= 2 and manifest.is_file() and '"sha256"' in manifest.read_text():
            break
        time.sleep(0.02)
    assert proc.poll() is None and len(workers) >= 2, "no worker processes to observe"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.02)
    assert not any(_alive(w) for w in workers), "workers outlived their parent"
    done = subprocess.run([*GROK1, *args, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = [a if a != str(out) else str(tmp_path / "clean") for a in args]
    subprocess.run([*GROK1, *clean], check=True)
    skip = {"skip": lambda p: p.name == "grok1-manifest.json"}
    assert file_digests(out, **skip) == file_digests(tmp_path / "clean", **skip)


def test_make_tiny_overwrite_replaces_only_its_own_output(tmp_path):
    folder = tmp_path / "gen"
    ok("make-tiny", folder, "--preset", "tiny", "--layers", "3")
    ok("make-tiny", folder, "--preset", "tiny", "--layers", "2", "--overwrite")
    names = sorted(p.name for p in (folder / "ckpt-0").iterdir())
    assert names == [f"tensor{i:05d}_000" for i in range(2 + 12 * 2)]  # no stale layer files
    (folder / "mine.txt").write_text("keep")
    assert "mine.txt" in bad_input("make-tiny", folder, "--overwrite")
    assert (folder / "mine.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".incomplete")]


def test_make_tiny_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from converter import generate

    calls = {"n": 0}
    original = generate.write_leaf

    def failing(path, spec, payloads):
        calls["n"] += 1
        if calls["n"] == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, spec, payloads)

    monkeypatch.setattr(generate, "write_leaf", failing)
    line = bad_input("make-tiny", tmp_path / "gen", "--quiet")
    assert "disk full" in line and "--resume" not in line
    assert list(tmp_path.iterdir()) == []
