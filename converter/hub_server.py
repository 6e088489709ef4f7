"""`grok1 serve`: a small Hugging Face Hub-compatible server over a folder of plain repos.

Repos are folders `ROOT/NAMESPACE/NAME/`; uploads land there as plain files. It answers what
huggingface_hub's download and upload calls send: repo info, recursive tree listings with LFS
sha256, resolve (HEAD/GET with Range), repo creation, preupload, the LFS batch API with basic
PUT transfers (sha256 checked on arrival), and ndjson commits. One revision per repo: `main`,
whose commit id is a hash of the repo's file list and contents. It binds to 127.0.0.1 by default
and refuses any path outside its folder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubStore", "make_server"]

_INTERNAL = ".grok1-hub"
_SKIP_DIRS = {".cache", ".git", _INTERNAL}
_REGULAR_SUFFIXES = {".json", ".md", ".txt", ".gitattributes", ".py", ".yaml", ".yml"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_CHUNK = 1 << 20


class HubError(Exception):
    """An HTTP error with the Hub's X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _is_regular(path: str, size: int) -> bool:
    return size == 0 or (Path(path).suffix in _REGULAR_SUFFIXES and size < 10 << 20) or \
        path == ".gitattributes"


class HubStore:
    """Repos as plain folders, with cached file hashes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.internal = self.root / _INTERNAL
        (self.internal / "lfs").mkdir(parents=True, exist_ok=True)
        self._hashes: dict[str, tuple[int, int, str, str]] = {}
        self._lock = threading.Lock()

    def repo(self, repo_id: str, *, must_exist: bool = True) -> Path:
        """The folder of a repo id, validated."""
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise HubError(400, f"invalid repo id {repo_id!r}")
        path = self.root / repo_id
        if must_exist and not path.is_dir():
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return path

    def files(self, repo: Path) -> list[str]:
        """Relative paths of every file, sorted."""
        found = []
        for dirpath, dirnames, filenames in os.walk(repo):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in filenames:
                if name.endswith(".incomplete") or name.startswith(".grok1"):
                    continue
                found.append(Path(dirpath, name).relative_to(repo).as_posix())
        return sorted(found)

    def resolve_file(self, repo: Path, path: str) -> Path:
        """A file inside a repo; refuses anything outside it."""
        parts = Path(path).parts
        if not path or Path(path).is_absolute() or ".." in parts or any(
                p in _SKIP_DIRS for p in parts):
            raise HubError(400, f"refused path {path!r}")
        target = (repo / path).resolve()
        if not target.is_relative_to(repo.resolve()):
            raise HubError(400, f"refused path {path!r}")
        return target

    def hashes(self, file: Path) -> tuple[str, str]:
        """(sha256, git blob sha1) of a file, cached by size and mtime."""
        stat = file.stat()
        key = str(file)
        with self._lock:
            cached = self._hashes.get(key)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2], cached[3]
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % stat.st_size)
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha256.update(chunk)
                sha1.update(chunk)
        result = (stat.st_size, stat.st_mtime_ns, sha256.hexdigest(), sha1.hexdigest())
        with self._lock:
            self._hashes[key] = result
        return result[2], result[3]

    def entry(self, repo: Path, path: str) -> dict[str, Any]:
        """A tree entry as the Hub lists it."""
        file = repo / path
        size = file.stat().st_size
        sha256, sha1 = self.hashes(file)
        entry: dict[str, Any] = {"type": "file", "oid": sha1, "size": size, "path": path}
        if not _is_regular(path, size):
            entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
        return entry

    def commit_id(self, repo: Path) -> str:
        """The repo's single revision: a hash of every path and its content hash."""
        digest = hashlib.sha1()
        for path in self.files(repo):
            digest.update(f"{path}\0{self.hashes(repo / path)[0]}\n".encode())
        return digest.hexdigest()

    def check_revision(self, repo: Path, revision: str) -> str:
        """The commit id if `revision` names the current state, else a 404."""
        sha = self.commit_id(repo)
        if unquote(revision) not in ("main", sha):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha


class _Handler(BaseHTTPRequestHandler):
    store: HubStore
    rate: int = 0
    server_version = "grok1-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("GROK1_SERVE_LOG"):
            super().log_message(format, *args)

    # plumbing -------------------------------------------------------------------------------
    def _send_json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None
                   ) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            self._route(parts)
        except HubError as exc:
            headers = {"X-Error-Code": exc.code} if exc.code else {}
            headers["X-Error-Message"] = str(exc)
            self._send_json({"error": str(exc)}, exc.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _route(self, p: list[str]) -> None:
        method = self.command
        if len(p) >= 4 and p[:2] == ["api", "models"]:
            repo_id = f"{p[2]}/{p[3]}"
            rest = p[4:]
            if method == "GET" and (not rest or rest[0] == "revision"):
                return self._repo_info(repo_id, rest[1] if len(rest) > 1 else "main")
            if method == "GET" and rest and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if method == "POST" and rest and rest[0] == "paths-info" and len(rest) == 2:
                return self._paths_info(repo_id, rest[1])
            if method == "POST" and rest and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(repo_id, rest[1])
            if method == "POST" and rest and rest[0] == "commit" and len(rest) == 2:
                return self._commit(repo_id, rest[1])
        if method == "POST" and p == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "POST" and p == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if method == "PUT" and len(p) == 2 and p[0] == "lfs-upload":
            return self._lfs_put(p[1])
        if method == "POST" and len(p) == 6 and p[1].endswith(".git") and p[2:] == [
                "info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{p[0]}/{p[1].removesuffix('.git')}")
        if method in ("GET", "HEAD") and len(p) >= 5 and p[2] == "resolve":
            return self._resolve(f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        raise HubError(404, f"no such endpoint: {method} {self.path}")

    # downloads ------------------------------------------------------------------------------
    def _repo_info(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        sha = self.store.check_revision(repo, revision)
        self._send_json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                         "siblings": [{"rfilename": f} for f in self.store.files(repo)]})

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        files = [f for f in self.store.files(repo) if not prefix or f.startswith(prefix + "/")]
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in files:
            relative = path[len(prefix) + 1:] if prefix else path
            if "/" in relative and not recursive:
                folders.add((prefix + "/" if prefix else "") + relative.split("/")[0])
                continue
            for depth in range(1, relative.count("/") + 1):
                folders.add((prefix + "/" if prefix else "") + "/".join(
                    relative.split("/")[:depth]))
            entries.append(self.store.entry(repo, path))
        directories = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                        "size": 0, "path": d} for d in sorted(folders)]
        self._send_json(directories + entries)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        body = self._body().decode()
        form = parse_qs(body) if not body.startswith("{") else json.loads(body)
        paths = form.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        known = set(self.store.files(repo))
        self._send_json([self.store.entry(repo, p) for p in paths if p in known])

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self.store.repo(repo_id)
        sha = self.store.check_revision(repo, revision)
        file = self.store.resolve_file(repo, path)
        if not file.is_file():
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        entry = self.store.entry(repo, path)
        size = entry["size"]
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        start, end, status = 0, size - 1, 200
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            first, _, last = spec[6:].split(",")[0].partition("-")
            start = int(first) if first else max(size - int(last), 0)
            end = int(last) if first and last else size - 1
            if start >= size and size:
                raise HubError(416, f"range {spec} outside a {size}-byte file")
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", sha)
        if "lfs" in entry:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(file, "rb") as f:
            f.seek(start)
            left = end - start + 1
            began = time.monotonic()
            sent = 0
            while left > 0:
                chunk = f.read(min(_CHUNK if not self.rate else max(self.rate // 20, 1), left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
                sent += len(chunk)
                if self.rate:
                    ahead = sent / self.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    # uploads --------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        data = json.loads(self._body() or b"{}")
        repo_id = f"{data.get('organization') or 'user'}/{data.get('name')}"
        repo = self.store.repo(repo_id, must_exist=False)
        if repo.is_dir():
            self._send_json({"error": f"You already created this model repo: {repo_id}",
                             "url": f"{self._base()}/{repo_id}"}, 409)
            return
        repo.mkdir(parents=True)
        self._send_json({"url": f"{self._base()}/{repo_id}", "name": repo_id})

    def _validate_yaml(self) -> None:
        """Model-card metadata check: the front matter must be closed and hold key: value."""
        content = json.loads(self._body() or b"{}").get("content", "")
        lines = content.splitlines()
        errors = []
        if lines and lines[0].strip() == "---":
            if "---" not in (line.strip() for line in lines[1:]):
                errors.append({"message": "YAML front matter is not closed by ---"})
        else:
            errors.append({"message": "README.md has no YAML front matter"})
        self._send_json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _preupload(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        files = json.loads(self._body()).get("files", [])
        answer = []
        for item in files:
            path, size = item["path"], int(item["size"])
            mode = "regular" if _is_regular(path, size) else "lfs"
            info: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            target = self.store.resolve_file(repo, path)
            if target.is_file():
                sha256, sha1 = self.store.hashes(target)
                info["oid"] = sha256 if mode == "lfs" else sha1
            answer.append(info)
        self._send_json({"files": answer, "commitOid": self.store.commit_id(repo)})

    def _lfs_batch(self, repo_id: str) -> None:
        self.store.repo(repo_id)
        request = json.loads(self._body())
        objects = []
        for obj in request.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                raise HubError(400, f"invalid LFS oid {oid!r}")
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (self.store.internal / "lfs" / oid).is_file():
                entry["actions"] = {"upload": {"href": f"{self._base()}/lfs-upload/{oid}",
                                               "header": {}}}
            objects.append(entry)
        self._send_json({"transfer": "basic", "objects": objects},
                        headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise HubError(400, f"invalid LFS oid {oid!r}")
        length = int(self.headers.get("Content-Length") or 0)
        final = self.store.internal / "lfs" / oid
        tmp = final.with_name(f"{oid}.{secrets.token_hex(4)}.incomplete")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(_CHUNK, left))
                    if not chunk:
                        raise HubError(400, "upload ended early")
                    digest.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            if digest.hexdigest() != oid:
                raise HubError(400, f"sha256 mismatch: uploaded data hashes to "
                                    f"{digest.hexdigest()}, not {oid}")
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._send_json({})

    def _commit(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        operations = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        create_pr = self.query.get("create_pr", ["0"])[0] == "1"
        target_root = repo
        pr_number = None
        if create_pr:
            prs = self.store.internal / "prs" / repo_id
            prs.mkdir(parents=True, exist_ok=True)
            pr_number = len(list(prs.iterdir())) + 1
            target_root = prs / str(pr_number)
            shutil.copytree(repo, target_root, ignore=shutil.ignore_patterns(*_SKIP_DIRS))
        for op in operations:
            key, value = op.get("key"), op.get("value", {})
            if key == "header":
                continue
            target = self.store.resolve_file(target_root, value["path"])
            if key == "file":
                self._place(target, data=base64.b64decode(value["content"]))
            elif key == "lfsFile":
                staged = self.store.internal / "lfs" / value["oid"]
                if not staged.is_file() or staged.stat().st_size != int(value["size"]):
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was "
                                        "never uploaded")
                self._place(target, source=staged)
            elif key in ("deletedFile", "deletedFolder"):
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        sha = self.store.commit_id(repo)
        self._send_json({"commitUrl": f"{self._base()}/{repo_id}/commit/{sha}",
                         "commitOid": sha,
                         "pullRequestUrl": (f"{self._base()}/{repo_id}/discussions/{pr_number}"
                                            if pr_number else None)})

    @staticmethod
    def _place(target: Path, *, data: bytes | None = None, source: Path | None = None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{secrets.token_hex(4)}.incomplete")
        try:
            if source is not None:
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(data or b"")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0,
                rate: int = 0) -> ThreadingHTTPServer:
    """A ready server (call serve_forever); port 0 picks a free one."""
    handler = type("Handler", (_Handler,), {"store": HubStore(root), "rate": rate})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
