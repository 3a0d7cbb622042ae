"""Tokenizer training, fast encoding and token shards (the `tokenizer` and `tokenized_shards` stages)."""
