"""Azure Functions entry point (Python v2 model): the one `FunctionApp` the worker indexes.

The routes are in `azure_http.py`; everything that is not about Azure Functions lives in `chatstream/`
and `chains/`.
"""

from __future__ import annotations

from chatstream.heap import startup_collection_paused

# Start-up only allocates objects that live as long as the process: collecting them is wasted work.
# The collector is back on when this block ends, with those objects frozen out of every later collection
# (see chatstream/heap.py); if an import fails, it is simply back on.
with startup_collection_paused():
    import logging

    from azure_http import create_app
    from chatstream import telemetry
    from chatstream.settings import get_settings

    settings = get_settings()
    logging.getLogger("chatstream").setLevel(settings.log_level)
    telemetry.configure(settings.azure_client_id)
    app = create_app(settings)
