"""`grok1 inspect`: what a checkpoint is, what it holds, and everything wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.engine.hashes import recorded_hash_problems
from converter.layouts import LAYOUTS, detect_layout

__all__ = ["format_report", "inspect_checkpoint"]


def inspect_checkpoint(path: Path, *, check_hashes: bool = False) -> dict[str, Any]:
    """A JSON-ready description: layout, config, tensors, totals and integrity problems; with
    `check_hashes`, also every file whose hash differs from the download record."""
    layout = detect_layout(path)
    found = LAYOUTS[layout].describe(Path(path))
    if check_hashes:
        found["problems"] += recorded_hash_problems(path)
    tensors = found.pop("tensors")
    parameters = found.pop("parameters")
    return {"path": str(path), "layout": layout, **found, "tensors": tensors,
            "totals": {"tensors": len(tensors), "bytes": sum(t["bytes"] for t in tensors),
                       "parameters": parameters}}


def format_report(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    cfg = report["config"]
    extra = "".join(f", {k} {report[k]}" for k in ("names", "quantization") if report.get(k))
    lines = [
        f"layout: {report['layout']}{extra}  ({report['location']})",
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
