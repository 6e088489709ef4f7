"""`grok1 inspect`: what a checkpoint is, what it holds, and everything wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.layouts.xai import XaiCheckpoint

__all__ = ["format_report", "inspect_checkpoint"]


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """A JSON-ready description: layout, config, tensors, totals and integrity problems."""
    checkpoint = XaiCheckpoint.open(path)
    tensors = [
        {"name": s.name, "file": s.file_name, "shape": list(s.shape), "dtype": s.dtype,
         "scales_shape": list(s.scales_shape) if s.scales_shape else None,
         "scale_groups": s.scale_groups if s.quantized else None, "bytes": s.payload_bytes}
        for s in checkpoint.specs
    ]
    return {
        "path": str(path),
        "layout": "xai",
        "tensor_dir": str(checkpoint.tensor_dir),
        "config_source": checkpoint.config_source,
        "config": checkpoint.config.to_dict(),
        "tensors": tensors,
        "totals": {"tensors": len(tensors), "bytes": sum(t["bytes"] for t in tensors),
                   "parameters": sum(s.numel for s in checkpoint.specs)},
        "problems": checkpoint.problems(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    cfg = report["config"]
    lines = [
        f"layout: {report['layout']}  ({report['tensor_dir']})",
        f"config: {report['config_source']}",
        "        " + ", ".join(f"{k}={cfg[k]}" for k in (
            "layers", "emb", "q_heads", "kv_heads", "key_size", "vocab", "experts", "topk",
            "ffn_size")),
        "",
        f"{'name':<58} {'shape':<20} {'dtype':<8} {'bytes':>14} {'G':>3}",
    ]
    for t in report["tensors"]:
        shape = "x".join(map(str, t["shape"]))
        lines.append(f"{t['name']:<58} {shape:<20} {t['dtype']:<8} {t['bytes']:>14,} "
                     f"{t['scale_groups'] or '-':>3}")
    totals = report["totals"]
    lines += ["", f"total: {totals['tensors']} tensors, {totals['bytes']:,} bytes, "
              f"{totals['parameters']:,} parameters"]
    problems = report["problems"]
    lines.append(f"problems: {len(problems) or 'none'}")
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)
