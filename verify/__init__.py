"""Reference forward passes of Grok-1, logits metrics and verification reports."""
