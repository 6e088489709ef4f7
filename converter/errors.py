"""One error hierarchy for the whole toolchain.

Every error names the file or tensor it is about, what was expected and what was found. Each
intent subclass also inherits the matching builtin, so callers can catch either. The CLI maps
`Grok1Error` subclasses to exit codes without tracebacks: `VerificationFailed` -> 1, the rest -> 2.
"""

from __future__ import annotations

__all__ = [
    "CheckpointNotFoundError",
    "ConfigMismatchError",
    "DiskSpaceError",
    "EngineError",
    "Grok1Error",
    "HubError",
    "HubHttpError",
    "LayoutError",
    "MalformedFileError",
    "MappingError",
    "ShapeMismatchError",
    "UnsafePickleError",
    "UsageError",
    "VerificationFailed",
]


class Grok1Error(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 2


class UsageError(Grok1Error, ValueError):
    """A flag or argument combination that cannot work."""


class CheckpointNotFoundError(Grok1Error, FileNotFoundError):
    """A checkpoint, file or tensor that should exist does not."""


class LayoutError(Grok1Error, ValueError):
    """A path that is not a checkpoint in any layout we know."""


class MalformedFileError(Grok1Error, ValueError):
    """A file that is truncated, corrupted or not in the expected format."""


class UnsafePickleError(MalformedFileError):
    """A pickle that references a global or opcode outside the allow-list."""


class ShapeMismatchError(Grok1Error, ValueError):
    """A tensor whose shape or dtype disagrees with the spec."""


class ConfigMismatchError(Grok1Error, ValueError):
    """A config that contradicts the tensors found on disk."""


class MappingError(Grok1Error, KeyError):
    """Tensor names that do not map between layouts: lists every offender."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DiskSpaceError(Grok1Error, OSError):
    """Not enough free disk for the output."""


class EngineError(Grok1Error, RuntimeError):
    """An external engine (llama.cpp) that died or failed on a file: names the file and how."""


class HubError(Grok1Error, ConnectionError):
    """A Hub request that failed: auth, missing repo or revision, network."""


class HubHttpError(HubError):
    """What `grok1 serve` answers a bad request with: an HTTP status and the Hub's error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class VerificationFailed(Grok1Error):
    """A checkpoint that ran but did not meet the verification thresholds."""

    exit_code = 1
