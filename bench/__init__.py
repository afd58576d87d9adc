"""Streaming benchmark: the product against the naive pipeline, LangServe and a raw proxy (see README)."""
