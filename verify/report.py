"""Verification reports as a terminal table and as Markdown (for model cards)."""

from __future__ import annotations

from typing import Any

from verify.run import VerifyResult

__all__ = ["format_markdown", "format_table"]

_ROWS = [
    ("positions", "positions", "{:d}"),
    ("max_abs_diff", "max |logit diff|", "{:.4g}"),
    ("mean_abs_diff", "mean |logit diff|", "{:.4g}"),
    ("kl_mean", "KL(ref||cand) mean", "{:.4g}"),
    ("kl_p99", "KL p99", "{:.4g}"),
    ("kl_max", "KL max", "{:.4g}"),
    ("top1_agreement", "top-1 agreement", "{:.2%}"),
    ("top5_overlap", "top-5 overlap", "{:.2%}"),
    ("perplexity_reference", "perplexity (reference)", "{:.4f}"),
    ("perplexity_candidate", "perplexity (candidate)", "{:.4f}"),
    ("perplexity_ratio", "perplexity ratio", "{:.5f}"),
    ("nonfinite", "NaN/Inf logits", "{:d}"),
]


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(label, fmt.format(metrics[key])) for key, label, fmt in _ROWS]


def _layer_rows(per_layer: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3g}" if key in row else "-"
    return [(str(r["layer"]), cell(r, "attention"), cell(r, "moe"), cell(r, "hidden"))
            for r in per_layer]


def format_table(result: VerifyResult) -> str:
    """A plain-text table for the terminal."""
    lines = [f"tokens: {result.tokens}"] if result.tokens else []
    lines += [f"{label:<24} {value:>14}" for label, value in _rows(result.metrics)]
    if result.per_layer:
        lines += ["", f"{'layer':<8} {'attention':>12} {'moe':>12} {'output':>12}"]
        lines += [f"{a:<8} {b:>12} {c:>12} {d:>12}" for a, b, c, d in _layer_rows(
            result.per_layer)]
        lines.append("(relative error of each layer run on the reference's input)")
    lines.append("")
    lines.append("PASS" if result.passed else "FAIL: " + "; ".join(result.reasons))
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A Markdown table cell: a literal `|` would split the row."""
    return str(text).replace("|", "\\|")


def format_markdown(result: VerifyResult, *, title: str = "Verification") -> str:
    """Markdown tables, as embedded in model cards."""
    verdict = "passed" if result.passed else "failed: " + "; ".join(result.reasons)
    lines = [f"## {title}", "", f"Result: **{_cell(verdict)}**", ""]
    if result.tokens:
        lines += [f"Evaluated on {result.tokens}.", ""]
    lines += ["| metric | value |", "| --- | ---: |"]
    lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in _rows(result.metrics)]
    if result.per_layer:
        lines += ["", "| layer | attention | MoE | output |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _layer_rows(result.per_layer)]
    return "\n".join(lines) + "\n"
