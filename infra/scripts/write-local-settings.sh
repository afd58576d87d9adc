#!/bin/sh
# azd postprovision hook: write local.settings.json so `func start` uses the Azure OpenAI
# deployment azd just provisioned, authenticated with the developer's own Entra login
# (`az login` / `azd auth login`) - no keys. Idempotent: it only (re)sets the keys listed in
# MANAGED below and keeps everything else already in local.settings.json.
set -eu

ROOT_DIR=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
cd "$ROOT_DIR"

PYTHON=$(command -v python3 || command -v python || true)
if [ -z "$PYTHON" ]; then
  echo "write-local-settings: python3 not found; copy local.settings.json.example by hand." >&2
  exit 1
fi

if ! ENV_VALUES=$(azd env get-values); then
  echo "write-local-settings: 'azd env get-values' failed; is an azd environment selected?" >&2
  exit 1
fi

ENV_VALUES="$ENV_VALUES" "$PYTHON" - <<'PY'
import json
import os
import re
import tempfile

TARGET = "local.settings.json"
EXAMPLE = "local.settings.json.example"


def parse_env(text):
    """Parse `azd env get-values` output: KEY="value" lines (dotenv style)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r'^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$', line)
        if not match:
            continue
        key, raw = match.groups()
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
            if match.group(2).strip().startswith('"'):
                raw = raw.replace('\\"', '"').replace("\\\\", "\\")
        values[key] = raw
    return values


env = parse_env(os.environ["ENV_VALUES"])
missing = [k for k in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT") if not env.get(k)]
if missing:
    raise SystemExit("write-local-settings: azd env has no " + ", ".join(missing) + "; run `azd provision` first.")

if os.path.exists(TARGET):
    with open(TARGET, encoding="utf-8") as fh:
        settings = json.load(fh)
elif os.path.exists(EXAMPLE):
    with open(EXAMPLE, encoding="utf-8") as fh:
        settings = json.load(fh)
else:
    settings = {}

settings["IsEncrypted"] = False
values = settings.setdefault("Values", {})

MANAGED = {
    # Local Functions host needs these; Azure (Flex) must not have FUNCTIONS_WORKER_RUNTIME.
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "PYTHON_ENABLE_INIT_INDEXING": "1",
    # The provisioned model, reached with the developer's Entra login.
    "AZURE_OPENAI_ENDPOINT": env["AZURE_OPENAI_ENDPOINT"],
    "AZURE_OPENAI_DEPLOYMENT": env["AZURE_OPENAI_DEPLOYMENT"],
    "AZURE_OPENAI_API_VERSION": env.get("AZURE_OPENAI_API_VERSION") or values.get("AZURE_OPENAI_API_VERSION", ""),
    "CHAT_REASONING_DEPLOYMENTS": env.get("CHAT_REASONING_DEPLOYMENTS", values.get("CHAT_REASONING_DEPLOYMENTS", "")),
    # Keyless: the account has local auth disabled, and AZURE_CLIENT_ID must stay empty locally so
    # DefaultAzureCredential uses your az/azd login instead of looking for a managed identity.
    "AZURE_OPENAI_API_KEY": "",
    "AZURE_CLIENT_ID": "",
}
values.setdefault("AzureWebJobsStorage", "")
values.update(MANAGED)

fd, tmp = tempfile.mkstemp(prefix=".local.settings.", dir=".")
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    json.dump(settings, fh, indent=2)
    fh.write("\n")
os.replace(tmp, TARGET)
print(f"write-local-settings: {TARGET} now targets {MANAGED['AZURE_OPENAI_ENDPOINT']} "
      f"(deployment {MANAGED['AZURE_OPENAI_DEPLOYMENT']}). Sign in with `az login` or `azd auth login`.")
PY
