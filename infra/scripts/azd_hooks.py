"""azd hooks that make the first `azd up` (and the one after `azd down`) succeed.

preprovision: `azd down` without --purge leaves the Azure OpenAI account soft-deleted, and its name
  (derived from the environment) is then taken: the next provision fails. If `az` finds such an account
  in this environment's resource group, this sets AZURE_OPENAI_RESTORE=true so Bicep restores it
  (or, with CHATSTREAM_SOFT_DELETED=purge, purges it first). Without `az` it warns and goes on.
predeploy: storage has shared keys off, so the package upload goes through the app's identity, and
  storage answers 403 until its new role assignment has propagated (about a minute). This waits until
  AZURE_APP_STORAGE_ROLE_CREATED_ON (a provision output) is CHATSTREAM_ROLE_PROPAGATION_SECONDS old
  (default 120); an old assignment means no wait.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

# The hook runs on the developer's own python3, which may be older than the app's.
UTC = timezone.utc  # noqa: UP017

DEFAULT_PROPAGATION_SECONDS = 120


def azd_env() -> dict[str, str]:
    """`azd env get-values` (KEY="value" lines) as a dict."""
    out = subprocess.run(["azd", "env", "get-values"], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match:
            raw = match.group(2).strip()
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
                raw = raw[1:-1]
            values[match.group(1)] = raw
    return values


def azd_set(name: str, value: str) -> None:
    subprocess.run(["azd", "env", "set", name, value], check=True)


def say(message: str) -> None:
    print(f"chatstream hook: {message}", flush=True)


def deleted_openai_accounts(env: dict[str, str]) -> list[dict[str, str]] | None:
    """Soft-deleted OpenAI accounts in this environment's resource group; None when az can't tell."""
    if shutil.which("az") is None:
        return None
    cmd = ["az", "cognitiveservices", "account", "list-deleted", "-o", "json"]
    if env.get("AZURE_SUBSCRIPTION_ID"):
        cmd += ["--subscription", env["AZURE_SUBSCRIPTION_ID"]]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    group = f"/resourcegroups/rg-{env.get('AZURE_ENV_NAME', '')}/".lower()
    found = []
    for account in json.loads(result.stdout or "[]"):
        account_id = str(account.get("id", "")).lower()
        name = str(account.get("name", ""))
        if group in account_id and name.startswith("oai-"):
            found.append({"name": name, "location": str(account.get("location", "")), "id": account_id})
    return found


def preprovision() -> int:
    env = azd_env()
    accounts = deleted_openai_accounts(env)
    if accounts is None:
        say(
            "could not list soft-deleted Azure OpenAI accounts (is `az` installed and logged in?). If this "
            "environment was taken down with `azd down` without --purge, provisioning fails on the name: run "
            "`azd env set AZURE_OPENAI_RESTORE true`, or purge it (see docs/deploy.md)."
        )
        return 0
    if not accounts:
        azd_set("AZURE_OPENAI_RESTORE", "false")
        return 0
    account = accounts[0]
    if os.environ.get("CHATSTREAM_SOFT_DELETED", "restore") == "purge":
        group = f"rg-{env.get('AZURE_ENV_NAME', '')}"
        say(f"purging soft-deleted Azure OpenAI account {account['name']} ({account['location']})")
        subprocess.run(
            [
                "az",
                "cognitiveservices",
                "account",
                "purge",
                "-n",
                account["name"],
                "-g",
                group,
                "-l",
                account["location"],
            ],
            check=True,
        )
        azd_set("AZURE_OPENAI_RESTORE", "false")
        return 0
    say(
        f"restoring soft-deleted Azure OpenAI account {account['name']} (set CHATSTREAM_SOFT_DELETED=purge "
        "to purge it instead)"
    )
    azd_set("AZURE_OPENAI_RESTORE", "true")
    return 0


def parse_time(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def predeploy() -> int:
    env = azd_env()
    created = parse_time(env.get("AZURE_APP_STORAGE_ROLE_CREATED_ON", ""))
    if created is None:
        say("no AZURE_APP_STORAGE_ROLE_CREATED_ON in the azd env (provision first); not waiting")
        return 0
    wait_for = float(os.environ.get("CHATSTREAM_ROLE_PROPAGATION_SECONDS", DEFAULT_PROPAGATION_SECONDS))
    remaining = wait_for - (datetime.now(UTC) - created).total_seconds()
    if remaining > 0:
        say(f"the app's storage role is new; waiting {remaining:.0f} s for it to propagate before deploying")
        time.sleep(remaining)
    return 0


def main(argv: list[str]) -> int:
    hooks = {"preprovision": preprovision, "predeploy": predeploy}
    if len(argv) != 1 or argv[0] not in hooks:
        print(f"usage: {sys.argv[0]} {'|'.join(hooks)}", file=sys.stderr)
        return 2
    return hooks[argv[0]]()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
