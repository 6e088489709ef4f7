"""Verification reports as a terminal table and as Markdown (for model cards)."""

from __future__ import annotations

from typing import Any

from verify.run import VerifyResult

__all__ = ["format_markdown", "format_table", "limits_line"]

_ROWS = [
    ("positions", "positions", "{:d}"),
    ("max_abs_diff", "max |logit diff|", "{:.4g}"),
    ("mean_abs_diff", "mean |logit diff|", "{:.4g}"),
    ("kl_mean", "KL(ref||cand) mean", "{:.4g}"),
    ("kl_p99", "KL p99", "{:.4g}"),
    ("kl_max", "KL max", "{:.4g}"),
    ("top1_agreement", "top-1 agreement", "{:.2%}"),
    ("top5_overlap", "top-5 overlap", "{:.2%}"),
    ("perplexity_reference", "perplexity (reference)", "{:.6g}"),
    ("perplexity_candidate", "perplexity (candidate)", "{:.6g}"),
    ("perplexity_ratio", "perplexity ratio", "{:.6g}"),
    ("nonfinite", "NaN/Inf logits", "{:d}"),
]


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    return [(label, fmt.format(metrics[key])) for key, label, fmt in _ROWS]


def _layer_rows(per_layer: list[dict[str, Any]], limit: float | None,
                mark: str) -> list[tuple[str, str, str, str]]:
    """Each layer's relative errors; a value over `limit` carries `mark`."""
    def cell(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "-"
        over = limit is not None and row[key] > limit
        return mark.format(f"{row[key]:.3g}") if over else f"{row[key]:.3g}"
    return [(str(r["layer"]), cell(r, "attention"), cell(r, "moe"), cell(r, "hidden"))
            for r in per_layer]


def limits_line(result: VerifyResult) -> str:
    """The limits the candidate was judged by, in words."""
    t = result.thresholds
    parts = [f"{label} {op} {fmt.format(value)}" for label, op, value, fmt in (
        ("mean KL", "<=", t.max_kl, "{:g}"), ("top-1 agreement", ">=", t.min_top1, "{:.0%}"),
        ("perplexity ratio", "<=", t.max_ppl_ratio, "{:g}"),
        ("max |logit diff|", "<=", t.max_abs_diff, "{:g}"),
        ("per-layer error", "<=", t.max_layer_error, "{:g}")) if value is not None]
    return "limits: " + ", ".join(parts)


def _flag_note(result: VerifyResult) -> str:
    flagged = result.metrics.get("flagged_layers") or []
    if not flagged:
        return ""
    return (f" ({len(flagged)} layer(s) over the per-layer limit "
            f"{result.thresholds.max_layer_error:g}: {', '.join(map(str, flagged))})")


def format_table(result: VerifyResult) -> str:
    """A plain-text table for the terminal."""
    lines = [f"profile: {result.profile} ({result.profile_source})"] if result.profile else []
    lines += [f"tokens: {result.tokens}"] if result.tokens else []
    lines += [f"{label:<24} {value:>14}" for label, value in _rows(result.metrics)]
    lines.append(limits_line(result))
    if result.per_layer:
        lines += ["", f"{'layer':<8} {'attention':>12} {'moe':>12} {'output':>12}"]
        lines += [f"{a:<8} {b:>12} {c:>12} {d:>12}" for a, b, c, d in _layer_rows(
            result.per_layer, result.thresholds.max_layer_error, "{} !")]
        lines.append("(relative error of each layer run on the reference's input; ! marks a "
                     "value over the per-layer limit)")
    lines.append("")
    lines.append(("PASS" + _flag_note(result)) if result.passed else
                 "FAIL: " + "; ".join(result.reasons)
                 + (f" ({result.advice})" if result.advice else ""))
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A Markdown table cell: a literal `|` would split the row."""
    return str(text).replace("|", "\\|")


def format_markdown(result: VerifyResult, *, title: str = "Verification") -> str:
    """Markdown tables, as embedded in model cards."""
    verdict = ("passed" + _flag_note(result)) if result.passed else (
        "failed: " + "; ".join(result.reasons))
    lines = [f"## {title}", "", f"Result: **{_cell(verdict)}**", ""]
    if result.tokens:
        lines += [f"Evaluated on {result.tokens}.", ""]
    lines += ["| metric | value |", "| --- | ---: |"]
    lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in _rows(result.metrics)]
    limits = limits_line(result)
    lines += ["", _cell(limits[0].upper() + limits[1:]) + "."]
    if result.per_layer:
        lines += ["", "Relative error of each layer run on the reference's input (values over "
                  "the per-layer limit in bold):", "",
                  "| layer | attention | MoE | output |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _layer_rows(
            result.per_layer, result.thresholds.max_layer_error, "**{}**")]
    return "\n".join(lines) + "\n"
