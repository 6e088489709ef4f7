"""`Grok1Config`: the one description of a Grok-1 model's dimensions, with named presets.

The real model's numbers are the defaults. A `config.json` sidecar beside `ckpt-0/` (the keys of
the upstream fixture's config) describes any other size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from converter.errors import ConfigMismatchError, MalformedFileError, UsageError
from converter.files.safe_read import read_json

__all__ = ["PRESETS", "Grok1Config", "default_ffn_size", "load_sidecar", "save_sidecar"]

SIDECAR_NAME = "config.json"
# Keys the upstream fixture's sidecar carries for provenance only.
_INFORMATIONAL_KEYS = frozenset({"upstream_rev", "jax", "haiku", "widening_factor", "generator"})


# Bounds far beyond any Grok-1 (the real model: 64 layers, emb 6144, vocab 131072), so that a
# hostile config cannot make the spec itself huge before any file is checked.
_INT_RANGES = {"layers": (1, 1024), "emb": (1, 1 << 17), "q_heads": (1, 1024),
               "kv_heads": (1, 1024), "key_size": (2, 1 << 12), "vocab": (1, 1 << 22),
               "experts": (1, 1024), "topk": (1, 1024), "ffn_size": (1, 1 << 20),
               "scale_groups": (1, 1024), "pad_token": (0, 1 << 22), "bos_token": (0, 1 << 22),
               "eos_token": (0, 1 << 22), "max_seq_len": (1, 1 << 22)}
_FLOAT_RANGES = {"emb_mult": (0.0, 1e6), "out_mult": (0.0, 1e6), "attn_mult": (0.0, 1e6),
                 "attn_softcap": (0.0, 1e6), "rope_base": (1.0, 1e12),
                 "rms_norm_eps": (0.0, 1.0)}


def _type_problems(config: Grok1Config) -> list[str]:
    """Integer fields must be integers, float fields finite numbers (ints become floats)."""
    problems = []
    for name in _INT_RANGES:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, found {value!r}")
    for name in _FLOAT_RANGES:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            problems.append(f"{name} must be a finite number, found {value!r}")
        else:
            object.__setattr__(config, name, float(value))
    return problems


def default_ffn_size(emb: int, widening_factor: float = 8.0) -> int:
    """Upstream's `ffn_size`: int(widening * emb) * 2 // 3, rounded up to a multiple of 8."""
    size = int(widening_factor * emb) * 2 // 3
    return size + (-size) % 8


@dataclasses.dataclass(frozen=True)
class Grok1Config:
    """Dimensions and constants of a Grok-1 model; the defaults are the released model's."""

    layers: int = 64
    emb: int = 6144
    q_heads: int = 48
    kv_heads: int = 8
    key_size: int = 128
    vocab: int = 131072
    experts: int = 8
    topk: int = 2
    ffn_size: int = 32768
    emb_mult: float = math.sqrt(6144)
    out_mult: float = 0.5773502691896257  # upstream: 1/sqrt(3) as sqrt(3)/3 rounds
    attn_mult: float = 1 / math.sqrt(128)
    attn_softcap: float = 30.0
    rope_base: float = 10000.0
    rms_norm_eps: float = 1e-5
    scale_groups: int = 8
    pad_token: int = 0
    bos_token: int = 1
    eos_token: int = 2
    max_seq_len: int = 8192

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:
            raise UsageError("invalid Grok-1 config: " + "; ".join(problems))
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                problems.append(f"{name}={value} must lie in [{low}, {high}]")
        for name, (low, high) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if not low < value < high:
                problems.append(f"{name}={value} must lie strictly between {low} and {high}")
        for name in ("pad_token", "bos_token", "eos_token"):
            if not 0 <= getattr(self, name) < self.vocab:
                problems.append(f"{name}={getattr(self, name)} is not an id of the "
                                f"{self.vocab}-token vocabulary")
        if problems:
            raise UsageError("invalid Grok-1 config: " + "; ".join(problems))
        if self.q_heads % self.kv_heads:
            problems.append(f"q_heads={self.q_heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.topk > self.experts:
            problems.append(f"topk={self.topk} exceeds experts={self.experts}")
        if self.key_size % 2:
            problems.append(f"key_size={self.key_size} must be even for RoPE")
        for name, dim in (("ffn_size", self.ffn_size), ("q_heads*key_size",
                                                        self.q_heads * self.key_size)):
            if dim % self.scale_groups:
                problems.append(
                    f"{name}={dim} is not divisible by scale_groups={self.scale_groups}")
        if problems:
            raise UsageError("invalid Grok-1 config: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Grok1Config:
        """A named preset (see `PRESETS`) with optional field overrides."""
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        fields = dict(PRESETS[name])
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Grok1Config:
        """Build from sidecar keys; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - _INFORMATIONAL_KEYS)
        if unknown:
            raise MalformedFileError(
                f"{source}: unknown config keys {unknown}; known: {sorted(known)}")
        try:
            config = cls(**{k: v for k, v in data.items() if k in known})
        except UsageError as exc:
            raise MalformedFileError(f"{source}: {exc}") from None
        if "widening_factor" in data and "ffn_size" in data:
            widening = data["widening_factor"]
            if isinstance(widening, bool) or not isinstance(widening, int | float) or not (
                    0 < widening < 1e4):
                raise MalformedFileError(f"{source}: widening_factor must be a positive number, "
                                         f"found {widening!r}")
            expected = default_ffn_size(config.emb, float(widening))
            if expected != config.ffn_size:
                raise ConfigMismatchError(
                    f"{source}: ffn_size={config.ffn_size} disagrees with widening_factor="
                    f"{data['widening_factor']} (expected {expected})")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The sidecar keys, in a stable order."""
        return dataclasses.asdict(self)

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads."""
        return self.q_heads * self.key_size

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.kv_heads * self.key_size


def _scaled(emb: int, q_heads: int, kv_heads: int, key_size: int, vocab: int, layers: int,
            ffn_size: int | None = None) -> dict[str, Any]:
    return {
        "layers": layers, "emb": emb, "q_heads": q_heads, "kv_heads": kv_heads,
        "key_size": key_size, "vocab": vocab, "ffn_size": ffn_size or default_ffn_size(emb),
        "emb_mult": math.sqrt(emb), "attn_mult": 1 / math.sqrt(key_size),
        "max_seq_len": 8192,
    }


PRESETS: dict[str, dict[str, Any]] = {
    # The shared fixture's dimensions: 12 layers so that lexicographic file order matters.
    "tiny": _scaled(emb=64, q_heads=16, kv_heads=8, key_size=16, vocab=256, layers=12),
    # About 35 MB with Grok-1's 131072-token vocabulary, so text and the shipped tokenizer can
    # be tried quickly; query heads x head size = embedding size, as llama.cpp's grok needs,
    # and every width a multiple of 8, as the original code's sharding needs.
    "text": _scaled(emb=64, q_heads=8, kv_heads=8, key_size=8, vocab=131072, layers=2),
    # About 50 MB: pipeline and quantization tests.
    "small": _scaled(emb=256, q_heads=16, kv_heads=8, key_size=16, vocab=4096, layers=5),
    # About 50 MB with the real head size 128 (and its attention multiplier 1/sqrt(128)), which
    # vLLM's CPU attention needs (it takes 32, 64, 80, 96, 112, 128, ..., not 16), grouped-query
    # attention (2 query heads per key/value head), and widths that are multiples of 128 like the
    # release's (upstream's ffn_size of 384 is 2048), so group-128 int4 covers every Linear.
    "serve": _scaled(emb=384, q_heads=16, kv_heads=8, key_size=128, vocab=4096, layers=2),
    # About 2.2 GB, 12 layers, the real model's ratios (q/kv heads 6, ffn 16/3 emb): benchmarks.
    "bench": _scaled(emb=1152, q_heads=48, kv_heads=8, key_size=24, vocab=24576, layers=12),
    "real": {},
}


def load_sidecar(folder: Path) -> Grok1Config | None:
    """Read `folder/config.json` if it is a Grok-1 sidecar; None when there is none."""
    path = Path(folder) / SIDECAR_NAME
    if not path.is_file():
        return None
    data = read_json(path, "config.json")
    if not isinstance(data, dict):
        raise MalformedFileError(f"{path}: expected a JSON object")
    if "emb" not in data and "layers" not in data:
        return None  # some other config.json (e.g. a Hugging Face one), not a Grok-1 sidecar
    try:
        return Grok1Config.from_dict(data, source=str(path))
    except TypeError as exc:
        raise MalformedFileError(f"{path}: {exc}") from None


def save_sidecar(folder: Path, config: Grok1Config) -> Path:
    """Write `folder/config.json` describing `config`."""
    from converter.files.atomic import atomic_open

    path = Path(folder) / SIDECAR_NAME
    with atomic_open(path) as f:
        f.write((json.dumps(config.to_dict(), indent=2) + "\n").encode())
    return path
