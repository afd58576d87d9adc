"""The baselines the product is measured against; each runs as its own uvicorn process."""
