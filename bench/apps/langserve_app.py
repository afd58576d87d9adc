"""LangServe's `/stream` on the same chain. `python -m bench.apps.langserve_app PORT [asyncio|uvloop]`."""

from __future__ import annotations

import sys
import warnings

import uvicorn
from fastapi import FastAPI

warnings.filterwarnings("ignore")  # LangServe is deprecated and says so on import.
from langserve import add_routes  # noqa: E402

from bench.apps.common import chain  # noqa: E402

app = FastAPI()
add_routes(app, chain(), path="/chat", enabled_endpoints=["stream"])


if __name__ == "__main__":
    # The event loop is the benchmark's choice (argv[2]): plain asyncio as in Azure, or uvloop.
    loop = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop=loop)
