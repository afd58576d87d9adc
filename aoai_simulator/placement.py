"""Where this process runs: the simulated deployment must not stand in for a real model in Azure.

A Function App that lost its `AZURE_OPENAI_ENDPOINT` setting would otherwise answer every user with
simulated text and a 200, which looks healthy to every probe. So both ways of starting the simulator
(embedded in the app, `python -m aoai_simulator`) refuse when the platform's own variables say Azure,
unless `SIMULATOR_ALLOW_IN_AZURE=true` forces it (a demo deployment on purpose).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Set by the platform on App Service and every Functions plan (Flex Consumption included), and on
#: Container Apps; never by Core Tools or funchost. Not markers: FUNCTIONS_WORKER_RUNTIME (`func start`
#: sets it locally too) and CONTAINER_NAME (Linux Consumption sets it, but so do many local containers).
AZURE_MARKERS = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "CONTAINER_APP_NAME")
ALLOW_SETTING = "SIMULATOR_ALLOW_IN_AZURE"


def azure_marker(environ: Mapping[str, str] | None = None) -> str | None:
    """The first Azure platform variable that is set (non-blank), or None outside Azure."""
    env = os.environ if environ is None else environ
    return next((name for name in AZURE_MARKERS if env.get(name, "").strip()), None)


def allowed_by_env(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(ALLOW_SETTING, "").strip().lower() in ("1", "true", "yes", "on")
