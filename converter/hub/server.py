"""`grok1 serve`: a small Hugging Face Hub-compatible server over a folder of plain repos.

Repos are folders `ROOT/NAMESPACE/NAME/`; uploads land there as plain files. It answers what
huggingface_hub's download and upload calls send: repo info, recursive tree listings with LFS
sha256, resolve (HEAD/GET with Range, RFC 9110), repo creation, preupload, the LFS batch API with
basic PUT transfers (sha256 checked on arrival), and ndjson commits. One revision per repo:
`main`, whose commit id is a hash of the repo's file list and contents.

`HubStore` holds the repository logic; the request handler is HTTP plumbing over a route table.
The server binds to 127.0.0.1 by default. It serves only regular files that lie inside its
folder (no symbolic link out of it, no FIFO), answers every malformed request with a 4xx, caps
request bodies, and, when a token is set (required for writes when bound to another interface),
accepts writes only with it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from converter.errors import HubHttpError
from converter.files.atomic import atomic_open

__all__ = ["HubStore", "make_server"]

_INTERNAL = ".grok1-hub"
_SKIP_DIRS = {".cache", ".git", _INTERNAL}
_REGULAR_SUFFIXES = {".json", ".md", ".txt", ".gitattributes", ".py", ".yaml", ".yml"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_OID = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MAX_NAME = 255  # bytes of one path component (a file name on Linux)
_MAX_BODY = 64 << 20  # JSON / ndjson request bodies (LFS uploads stream to disk instead)


def _is_regular(path: str, size: int) -> bool:
    return size == 0 or (Path(path).suffix in _REGULAR_SUFFIXES and size < 10 << 20) or \
        path == ".gitattributes"


class HubStore:
    """Repos as plain folders: listing, hashing, and applying uploads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.internal = self.root / _INTERNAL
        (self.internal / "lfs").mkdir(parents=True, exist_ok=True)
        self._hashes: dict[str, tuple[tuple[int, ...], str, str]] = {}
        self._lock = threading.Lock()

    def repo(self, repo_id: str, *, must_exist: bool = True) -> Path:
        """The folder of a repo id, validated: inside the root, not a link out of it."""
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise HubHttpError(400, f"invalid repo id {repo_id!r}")
        path = self.root / repo_id
        if path.is_symlink() or path.parent.is_symlink() or (
                path.exists() and not path.resolve().is_relative_to(self.root)):
            raise HubHttpError(403, f"repository {repo_id} is a link out of the served folder")
        if must_exist and not path.is_dir():
            raise HubHttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return path

    def files(self, repo: Path) -> list[str]:
        """Relative paths of every regular file (no links, FIFOs or sockets), sorted."""
        found = []
        for dirpath, dirnames, filenames in os.walk(repo):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS
                                 and not Path(dirpath, d).is_symlink())
            for name in filenames:
                path = Path(dirpath, name)
                if name.endswith(".incomplete") or name.startswith(".grok1"):
                    continue
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append(path.relative_to(repo).as_posix())
        return sorted(found)

    def resolve_file(self, repo: Path, path: str) -> Path:
        """A path inside a repo; refuses anything outside it or reached through a link."""
        parts = Path(path).parts
        if not path or "\0" in path or Path(path).is_absolute() or ".." in parts or any(
                p in _SKIP_DIRS for p in parts):
            raise HubHttpError(400, f"refused path {path!r}")
        target = repo / path
        if any(p.is_symlink() for p in (target, *target.parents) if repo in p.parents or
               p == target):
            raise HubHttpError(403, f"refused path {path!r}: a symbolic link")
        return target

    def regular_file(self, repo: Path, path: str) -> Path:
        """An existing regular file of a repo, or 404."""
        target = self.resolve_file(repo, path)
        if not target.is_file() or not stat.S_ISREG(target.lstat().st_mode):
            raise HubHttpError(404, f"Entry not found: {path}", "EntryNotFound")
        return target

    def hashes(self, file: Path) -> tuple[str, str]:
        """(sha256, git blob sha1) of a file, cached until its inode, size, mtime or ctime
        changes (ctime cannot be set back, so an edit that restores the mtime still shows)."""
        info = file.stat()
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with self._lock:
            cached = self._hashes.get(str(file))
        if cached and cached[0] == key:
            return cached[1], cached[2]
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % info.st_size)
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha256.update(chunk)
                sha1.update(chunk)
        with self._lock:
            self._hashes[str(file)] = (key, sha256.hexdigest(), sha1.hexdigest())
        return sha256.hexdigest(), sha1.hexdigest()

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
            raise HubHttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def create(self, repo_id: str) -> bool:
        """Create a repo; False when it exists."""
        repo = self.repo(repo_id, must_exist=False)
        if repo.is_dir():
            return False
        repo.mkdir(parents=True)
        return True

    def staged(self, oid: str) -> Path:
        """Where an uploaded LFS object is kept until a commit places it."""
        if not _OID.match(oid):
            raise HubHttpError(400, f"invalid LFS oid {oid!r}")
        return self.internal / "lfs" / oid

    def receive(self, oid: str, length: int, read: Callable[[int], bytes]) -> None:
        """Stream an LFS object to disk, checking its sha256 before it is kept."""
        digest = hashlib.sha256()
        with atomic_open(self.staged(oid)) as f:
            left = length
            while left > 0:
                chunk = read(min(_CHUNK, left))
                if not chunk:
                    raise HubHttpError(400, "upload ended early")
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
            if digest.hexdigest() != oid:
                raise HubHttpError(400, f"sha256 mismatch: uploaded data hashes to "
                                        f"{digest.hexdigest()}, not {oid}")

    def commit(self, repo_id: str, operations: list[Any], *, create_pr: bool
               ) -> tuple[str, int | None]:
        """Apply ndjson commit operations; returns the new commit id and the PR number."""
        repo = self.repo(repo_id)
        root, pr_number = repo, None
        if create_pr:
            prs = self.internal / "prs" / repo_id
            prs.mkdir(parents=True, exist_ok=True)
            pr_number = len(list(prs.iterdir())) + 1
            root = prs / str(pr_number)
            shutil.copytree(repo, root, ignore=shutil.ignore_patterns(*_SKIP_DIRS))
        for op in operations:
            key = op.get("key") if isinstance(op, dict) else None
            value = op.get("value") if isinstance(op, dict) else None
            if key == "header":
                continue
            if not isinstance(value, dict) or not isinstance(value.get("path"), str):
                raise HubHttpError(400, f"malformed commit operation {op!r:.200}")
            target = self.resolve_file(root, value["path"].strip("/"))
            if key == "file":
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except (ValueError, TypeError):
                    raise HubHttpError(400, f"{value['path']}: content is not base64") from None
                _place(target, data=data)
            elif key == "lfsFile":
                staged = self.staged(str(value.get("oid")))
                if not staged.is_file() or staged.stat().st_size != value.get("size"):
                    raise HubHttpError(400, f"LFS object {value.get('oid')} for {value['path']} "
                                            "was never uploaded")
                _place(target, source=staged)
            elif key in ("deletedFile", "deletedFolder"):
                if target == root:
                    raise HubHttpError(400, "refused to delete the whole repository")
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            else:
                raise HubHttpError(400, f"unsupported commit operation {key!r}")
        return self.commit_id(repo), pr_number


def _place(target: Path, *, data: bytes | None = None, source: Path | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target) as f:
        if source is None:
            f.write(data or b"")
        else:
            with open(source, "rb") as staged:
                shutil.copyfileobj(staged, f, _CHUNK)


def _position(digits: str) -> str:
    """A range position as digits, a number of 19 or more digits as one past any file (no
    file here is an exabyte; `int` of thousands of digits is refused by Python)."""
    return digits if len(digits) < 19 else str(10**18)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range [first, last] a Range header asks for, per RFC 9110: None to send the
    whole file (no header, or one that is not a valid single bytes range); 416 when nothing of
    the file is asked for."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = (_position(g) for g in match.groups())
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise HubHttpError(416, f"range {header} selects nothing of a {size}-byte file")
        return max(size - length, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None  # an invalid range-spec: ignored, the whole file is sent
    if start >= size:
        raise HubHttpError(416, f"range {header} starts past the end of a {size}-byte file")
    return start, end


class _Handler(BaseHTTPRequestHandler):
    store: HubStore
    rate: int = 0
    token: str | None = None
    writable: bool = True
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

    def _length(self) -> int:
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit():
            raise HubHttpError(400, f"invalid Content-Length {raw!r}")
        return int(raw)

    def _body(self) -> bytes:
        length = self._length()
        if length > _MAX_BODY:
            raise HubHttpError(413, f"request body of {length} bytes exceeds {_MAX_BODY}")
        return self.rfile.read(length) if length else b""

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except (ValueError, RecursionError):  # syntax, encoding, depth, huge integers
            raise HubHttpError(400, "request body is not valid JSON") from None

    def _require_write(self) -> None:
        if not self.writable:
            raise HubHttpError(403, "this server is read-only: it is bound beyond loopback "
                                    "without --token")
        if self.token is None:
            return
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HubHttpError(401, "a valid token is required to write to this server")

    def _dispatch(self) -> None:
        try:
            url = urlsplit(self.path)
            self.query = parse_qs(url.query)
            path = unquote(url.path)
            if "\0" in path:
                raise HubHttpError(400, "refused path with a NUL byte")
            if any(len(part.encode()) > _MAX_NAME for part in path.split("/")):
                raise HubHttpError(414, f"a path component longer than {_MAX_NAME} bytes")
            for methods, pattern, handler, writes in _ROUTES:
                match = pattern.fullmatch(path)
                if self.command in methods and match:
                    if writes:
                        self._require_write()
                    return handler(self, *match.groups())
            raise HubHttpError(404, f"no such endpoint: {self.command} {self.path}")
        except HubHttpError as exc:
            # header values are Latin-1 on the wire: anything else is escaped, never a crash
            message = " ".join(str(exc).split())[:500].encode("ascii", "backslashreplace")
            headers = {"X-Error-Message": message.decode(), "Connection": "close"}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self.close_connection = True  # its body may be unread
            self._send_json({"error": str(exc)}, exc.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # never leave a client without an answer
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json({"error": f"internal error: {type(exc).__name__}"}, 500,
                                {"Connection": "close"})

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # downloads ------------------------------------------------------------------------------
    def repo_info(self, repo_id: str, revision: str | None) -> None:
        repo = self.store.repo(repo_id)
        sha = self.store.check_revision(repo, revision or "main")
        self._send_json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                         "siblings": [{"rfilename": f} for f in self.store.files(repo)]})

    def tree(self, repo_id: str, revision: str, prefix: str | None) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        prefix = (prefix or "").strip("/")
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

    def paths_info(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        body = self._body().decode("utf-8", "replace")
        if body.startswith("{"):
            try:
                form = json.loads(body)
            except (ValueError, RecursionError):
                raise HubHttpError(400, "request body is not valid JSON") from None
        else:
            form = parse_qs(body)
        paths = form.get("paths", []) if isinstance(form, dict) else []
        paths = [paths] if isinstance(paths, str) else paths
        known = set(self.store.files(repo))
        self._send_json([self.store.entry(repo, p) for p in paths if p in known])

    def resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self.store.repo(repo_id)
        sha = self.store.check_revision(repo, revision)
        file = self.store.regular_file(repo, path)
        entry = self.store.entry(repo, path)
        size = entry["size"]
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        try:
            span = parse_range(self.headers.get("Range"), size)
        except HubHttpError:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = span if span else (0, size - 1)
        self.send_response(206 if span else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", sha)
        if "lfs" in entry:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_file(file, start, end - start + 1)

    def _send_file(self, file: Path, start: int, left: int) -> None:
        with open(file, "rb") as f:
            f.seek(start)
            began, sent = time.monotonic(), 0
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
    def create_repo(self) -> None:
        data = self._json()
        if not isinstance(data, dict):
            raise HubHttpError(400, "expected a JSON object")
        repo_id = f"{data.get('organization') or 'user'}/{data.get('name')}"
        if not self.store.create(repo_id):
            self._send_json({"error": f"You already created this model repo: {repo_id}",
                             "url": f"{self._base()}/{repo_id}"}, 409)
            return
        self._send_json({"url": f"{self._base()}/{repo_id}", "name": repo_id})

    def validate_yaml(self) -> None:
        """Model-card metadata check: the front matter must be closed and hold key: value."""
        data = self._json()
        content = data.get("content", "") if isinstance(data, dict) else ""
        lines = str(content).splitlines()
        errors = []
        if lines and lines[0].strip() == "---":
            if "---" not in (line.strip() for line in lines[1:]):
                errors.append({"message": "YAML front matter is not closed by ---"})
        else:
            errors.append({"message": "README.md has no YAML front matter"})
        self._send_json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def preupload(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        data = self._json()
        files = data.get("files", []) if isinstance(data, dict) else None
        if not isinstance(files, list):
            raise HubHttpError(400, "expected {\"files\": [...]}")
        answer = []
        for item in files:
            if not (isinstance(item, dict) and isinstance(item.get("path"), str)
                    and isinstance(item.get("size"), int)):
                raise HubHttpError(400, f"malformed preupload entry {item!r:.200}")
            path, size = item["path"], item["size"]
            mode = "regular" if _is_regular(path, size) else "lfs"
            info: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            target = self.store.resolve_file(repo, path)
            if target.is_file():
                sha256, sha1 = self.store.hashes(target)
                info["oid"] = sha256 if mode == "lfs" else sha1
            answer.append(info)
        self._send_json({"files": answer, "commitOid": self.store.commit_id(repo)})

    def lfs_batch(self, namespace: str, name: str) -> None:
        self.store.repo(f"{namespace}/{name}")
        request = self._json()
        objects_in = request.get("objects", []) if isinstance(request, dict) else None
        if not isinstance(objects_in, list):
            raise HubHttpError(400, "expected {\"objects\": [...]}")
        objects = []
        for obj in objects_in:
            if not (isinstance(obj, dict) and isinstance(obj.get("size"), int)):
                raise HubHttpError(400, f"malformed LFS object {obj!r:.200}")
            oid = str(obj.get("oid"))
            entry: dict[str, Any] = {"oid": oid, "size": obj["size"], "authenticated": True}
            if not self.store.staged(oid).is_file():
                entry["actions"] = {"upload": {"href": f"{self._base()}/lfs-upload/{oid}",
                                               "header": {}}}
            objects.append(entry)
        self._send_json({"transfer": "basic", "objects": objects},
                        headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid: str) -> None:
        self.store.receive(oid, self._length(), self.rfile.read)
        self._send_json({})

    def commit(self, repo_id: str, revision: str) -> None:
        repo = self.store.repo(repo_id)
        self.store.check_revision(repo, revision)
        try:
            operations = [json.loads(line) for line in self._body().splitlines()
                          if line.strip()]
        except (ValueError, RecursionError):
            raise HubHttpError(400, "commit body is not ndjson") from None
        create_pr = self.query.get("create_pr", ["0"])[0] == "1"
        sha, pr_number = self.store.commit(repo_id, operations, create_pr=create_pr)
        self._send_json({"commitUrl": f"{self._base()}/{repo_id}/commit/{sha}",
                         "commitOid": sha,
                         "pullRequestUrl": (f"{self._base()}/{repo_id}/discussions/{pr_number}"
                                            if pr_number else None)})


_REPO = r"([^/]+/[^/]+)"
_ROUTES: list[tuple[frozenset[str], re.Pattern[str], Callable[..., None], bool]] = [
    (frozenset({"GET"}), re.compile(rf"/api/models/{_REPO}(?:/revision/([^/]+))?"),
     _Handler.repo_info, False),
    (frozenset({"GET"}), re.compile(rf"/api/models/{_REPO}/tree/([^/]+)(?:/(.*))?"),
     _Handler.tree, False),
    (frozenset({"POST"}), re.compile(rf"/api/models/{_REPO}/paths-info/([^/]+)"),
     _Handler.paths_info, False),
    (frozenset({"POST"}), re.compile(rf"/api/models/{_REPO}/preupload/([^/]+)"),
     _Handler.preupload, True),
    (frozenset({"POST"}), re.compile(rf"/api/models/{_REPO}/commit/([^/]+)"),
     _Handler.commit, True),
    (frozenset({"POST"}), re.compile(r"/api/repos/create"), _Handler.create_repo, True),
    (frozenset({"POST"}), re.compile(r"/api/validate-yaml"), _Handler.validate_yaml, False),
    (frozenset({"PUT"}), re.compile(r"/lfs-upload/([^/]+)"), _Handler.lfs_put, True),
    (frozenset({"POST"}), re.compile(r"/([^/]+)/([^/]+)\.git/info/lfs/objects/batch"),
     _Handler.lfs_batch, True),
    (frozenset({"GET", "HEAD"}), re.compile(rf"/{_REPO}/resolve/([^/]+)/(.+)"),
     _Handler.resolve, False),
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is not an error; anything else is logged on one line."""
        import sys

        kind, exc = sys.exc_info()[:2]
        if kind is not None and issubclass(kind, ConnectionError | TimeoutError):
            return
        sys.stderr.write(f"grok1 serve: error answering {client_address[0]}: "
                         f"{kind.__name__ if kind else 'unknown'}: {exc}\n")


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, rate: int = 0, *,
                token: str | None = None) -> ThreadingHTTPServer:
    """A ready server (call serve_forever); port 0 picks a free one. Bound beyond loopback,
    it accepts writes only when given a token (clients send it as HF_TOKEN)."""
    handler = type("Handler", (_Handler,), {
        "store": HubStore(root), "rate": rate, "token": token,
        "writable": token is not None or _is_loopback(host)})
    return _Server((host, port), handler)
