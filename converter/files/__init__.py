"""Files and their containers, read and written one tensor at a time: the release's pickles,
safetensors and torch shards, GGUF, atomic output and hostile-input-safe reads of small files."""
