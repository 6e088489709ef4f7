"""The Hub: the client (pinned, verified downloads; uploads with a model card) and `grok1 serve`,
a Hub-compatible server for air-gapped mirrors and hermetic tests."""
