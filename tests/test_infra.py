"""Offline checks of the azd/Bicep deployment (no Azure, no Bicep CLI).

The Bicep files are parsed with the tree-sitter Bicep grammar, so these tests look at the syntax
tree (declarations, object properties, string literals), not at raw text: comments cannot satisfy
or break a check, and a moved or renamed property fails loudly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_bicep
import yaml

from chatstream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"
RBAC = INFRA / "app" / "rbac.bicep"
EXAMPLE = ROOT / "local.settings.json.example"

# ---------------------------------------------------------------------------------------------
# Contract data
# ---------------------------------------------------------------------------------------------

#: Azure built-in role definition ids, as published in Microsoft Learn "Azure built-in roles"
#: (articles/role-based-access-control/built-in-roles/{storage,monitor,ai-machine-learning}.md;
#: the role's JSON "name" field).
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
}

#: Settings the platform (not chatstream.settings) needs; Bicep must set every one of them.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "PYTHON_ENABLE_INIT_INDEXING",
    "AZURE_CLIENT_ID",
}

#: Settings the code reads that the deployment deliberately leaves to the code default.
#: Each needs a reason; an entry that is no longer read by Settings fails the contract test.
OPTIONAL_IN_AZURE = {
    "AZURE_OPENAI_API_KEY": "keyless design: the account has disableLocalAuth, the app uses its identity",
    "OPENAI_BASE_URL": "alternative OpenAI-compatible provider; Azure deployments use Azure OpenAI",
    "OPENAI_API_KEY": "alternative provider only, and a secret: never an app setting from Bicep",
    "OPENAI_MODEL": "alternative provider only",
    "CHAT_SYSTEM_PROMPT": "code default; override with the extraAppSettings parameter",
    "CHAT_DEFAULT_CHAIN": "code default; override with extraAppSettings",
    "CHAT_MAX_BODY_BYTES": "request limit with a safe code default; override with extraAppSettings",
    "CHAT_MAX_MESSAGES": "request limit with a safe code default; override with extraAppSettings",
    "CHAT_MAX_CONTENT_CHARS": "request limit with a safe code default; override with extraAppSettings",
    "CHAT_MAX_TOKENS_LIMIT": "request limit with a safe code default; override with extraAppSettings",
    "CHAT_DEFAULT_MAX_TOKENS": "unset means the model's own default",
    "CHAT_UPSTREAM_TIMEOUT_SECONDS": "code default; override with extraAppSettings",
    "CHAT_COALESCE_DELTAS": "code default (on); override with extraAppSettings",
    "CHAT_LEAN_STREAMING": "code default (on); `false` only to rule the fast path out, via extraAppSettings",
    "CHAT_UPSTREAM_MAX_RETRIES": "code default; override with extraAppSettings",
    "CHAT_FIRST_EVENT_WAIT_SECONDS": "code default (5 s); override with extraAppSettings",
    "CHAT_UPSTREAM_READ_TIMEOUT_SECONDS": "code default (30 s); override with extraAppSettings",
    "CHAT_ALLOW_ANONYMOUS": "secure default (FUNCTION auth level); opt in with extraAppSettings",
    "CHAT_DIAGNOSTICS": "test-only diagnostics route; must stay off in Azure",
    "CHAT_DEPLOYMENTS": "defaults to the one deployment Bicep creates; list more with extraAppSettings",
    "CHAT_MAX_REQUEST_DEPLOYMENTS": "request limit with a safe code default; override with extraAppSettings",
    "CHAT_FALLBACK_DEPLOYMENTS": "none by default; list with extraAppSettings",
    "CHAT_TOOL_MAX_ROUNDS": "code default (4); override with extraAppSettings",
    "CHAT_RAG_TOP_K": "code default (4); override with extraAppSettings",
    "CHAT_REASONING_EFFORTS": "code default (every reasoning model takes it); override with extraAppSettings",
    "CHAT_RESUMABLE": "code default (opt-in per request); make every stream resumable with extraAppSettings",
    "CHAT_RESUME_GRACE_SECONDS": "code default (30 s); override with extraAppSettings",
    "CHAT_RESUME_TTL_SECONDS": "code default (10 min); override with extraAppSettings",
    "CHAT_RESUME_MAX_BYTES": "per-stream limit with a safe code default; override with extraAppSettings",
    "CHAT_RESUME_MAX_STREAMS": "per-instance limit with a safe code default; override with extraAppSettings",
    "CHAT_STREAM_STORE_CONNECTION_STRING": "a secret: Azure uses the keyless URL, never a connection string",
    "CHAT_STREAM_STORE_POLL_SECONDS": "code default; override with extraAppSettings",
    "CHAT_THREADS_STORE": "memory by default; postgres: bring your own Azure Database for PostgreSQL",
    "CHAT_THREADS_POSTGRES_URL": "bring your own Azure Database for PostgreSQL; infra does not create one",
    "CHAT_THREADS_TIMEOUT_SECONDS": "code default (4 s); override with extraAppSettings",
    "CHAT_THREADS_TTL_DAYS": "code default (30 days); override with extraAppSettings",
    "SIMULATOR_TTFT_MS": "simulator only; Azure uses the real deployment",
    "SIMULATOR_TOKEN_DELAY_MS": "simulator only; Azure uses the real deployment",
    "SIMULATOR_PORT": "simulator only; Azure uses the real deployment",
    "SIMULATOR_ALLOW_IN_AZURE": "off in Azure by design: simulated answers must never pass for the model",
}

#: App settings Bicep already sets for settings announced for the app but not yet in
#: chatstream/settings.py. Once one lands in Settings it is covered by the alias check instead.
ANNOUNCED_SETTINGS: set[str] = set()

#: Must never be app settings on Flex Consumption (runtime comes from functionAppConfig).
FORBIDDEN_ON_FLEX = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}

#: Values that select a real model provider; empty in the example so `func start` uses the
#: embedded simulated deployment until someone configures one.
PROVIDER_SETTINGS = {
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_CLIENT_ID",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
}

SECRET_NAME = re.compile(
    r"secret|password|passwd|pwd|token|connection_?string|conn_?str|(api|access|account|primary|"
    r"secondary|shared|instrumentation|storage|admin)_?key|keys$|key$",
    re.IGNORECASE,
)

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

# ---------------------------------------------------------------------------------------------
# Syntax-tree helpers
# ---------------------------------------------------------------------------------------------

_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def _tree(path: Path) -> tree_sitter.Tree:
    return _PARSER.parse(path.read_bytes())


def root(path: Path) -> tree_sitter.Node:
    return _tree(path).root_node


def text(node: tree_sitter.Node) -> str:
    return node.text.decode()


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def code_text(path: Path) -> str:
    """The file's source with every comment blanked out."""
    data = bytearray(path.read_bytes())
    for node in walk(root(path)):
        if node.type == "comment":
            data[node.start_byte : node.end_byte] = b" " * (node.end_byte - node.start_byte)
    return data.decode()


def literal(node: tree_sitter.Node | None) -> str | None:
    """The value of a plain string literal ('abc'), None for anything computed."""
    if node is None or node.type != "string":
        return None
    if any(child.type == "interpolation" for child in node.children):
        return None
    return "".join(text(c) for c in node.children if c.type == "string_content")


def prop_key(node: tree_sitter.Node) -> str:
    key = node.named_children[0]
    return literal(key) if key.type == "string" else text(key)


def props(obj: tree_sitter.Node) -> dict[str, tree_sitter.Node]:
    """Object properties by key (case kept) -> value node."""
    assert obj.type == "object", obj.type
    out = {}
    for child in obj.named_children:
        if child.type == "object_property":
            out[prop_key(child)] = child.named_children[-1]
    return out


def get(obj: tree_sitter.Node, *path: str, ci: bool = False) -> tree_sitter.Node:
    node = obj
    for key in path:
        found = props(node)
        if ci:
            found = {k.lower(): v for k, v in found.items()}
            key = key.lower()
        assert key in found, f"missing property {'.'.join(path)} (at {key!r})"
        node = found[key]
    return node


def declarations(path: Path, kind: str) -> dict[str, tree_sitter.Node]:
    """Top-level declarations of one kind (parameter/variable/output/resource/module) by name."""
    out = {}
    for node in root(path).named_children:
        if node.type == f"{kind}_declaration":
            out[text(node.named_children[0])] = node
    return out


def decorators_of(decl: tree_sitter.Node) -> list[str]:
    prev = decl.prev_named_sibling
    if prev is None or prev.type != "decorators":
        return []
    return [text(d) for d in prev.named_children]


def body(decl: tree_sitter.Node) -> tree_sitter.Node:
    """The object body of a resource/module declaration (unwrapping `= if (...) {...}`)."""
    last = decl.named_children[-1]
    if last.type == "if_statement":
        last = last.named_children[-1]
    assert last.type == "object", f"{text(decl.named_children[0])}: body is {last.type}"
    return last


def resources(path: Path, type_prefix: str) -> list[tuple[str, tree_sitter.Node]]:
    """Resources (not `existing` references) whose type starts with type_prefix."""
    out = []
    for name, decl in declarations(path, "resource").items():
        rtype = literal(decl.named_children[1]) or ""
        if rtype.lower().startswith(type_prefix.lower() + "@") and not any(
            c.type == "existing" for c in decl.children
        ):
            out.append((name, decl))
    return out


def has_default(param_decl: tree_sitter.Node) -> bool:
    return any(c.type == "=" for c in param_decl.children)


@cache
def bicep_app_settings() -> dict[str, str]:
    """name -> value source of every entry in api.bicep's `appSettings` variable."""
    var = declarations(API, "variable").get("appSettings")
    assert var is not None, "api.bicep must declare `var appSettings = [ {name, value}, ... ]`"
    array = var.named_children[-1]
    assert array.type == "array"
    settings: dict[str, str] = {}
    for item in array.named_children:
        if item.type == "comment":
            continue
        assert item.type == "object", text(item)
        entry = props(item)
        assert set(entry) == {"name", "value"}, f"app setting must be {{name, value}}: {text(item)}"
        name = literal(entry["name"])
        assert name, f"app setting names must be plain literals: {text(item)}"
        assert name not in settings, f"duplicate app setting {name}"
        settings[name] = text(entry["value"])
    return settings


# ---------------------------------------------------------------------------------------------
# Every .bicep file parses
# ---------------------------------------------------------------------------------------------


def test_expected_bicep_files_exist():
    names = {p.relative_to(INFRA).as_posix() for p in bicep_files()}
    assert {"main.bicep", "app/api.bicep", "app/rbac.bicep"} <= names


def test_grammar_rejects_broken_bicep():
    """Guard: the parser must actually flag syntax errors, or the parse test proves nothing."""
    broken = b"resource sa 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n"
    assert _PARSER.parse(broken).root_node.has_error


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses_without_errors(path: Path):
    bad = [
        f"{n.type} at line {n.start_point[0] + 1}: {text(n)[:60]!r}"
        for n in walk(root(path))
        if n.type == "ERROR" or n.is_missing
    ]
    assert not bad, bad


# ---------------------------------------------------------------------------------------------
# Settings contract: code <-> Bicep <-> local.settings.json.example
# ---------------------------------------------------------------------------------------------


def settings_aliases() -> set[str]:
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert None not in aliases, "every Settings field needs an alias (= env var name)"
    return aliases  # type: ignore[return-value]


def test_every_setting_is_set_by_bicep_or_explicitly_optional():
    in_bicep = set(bicep_app_settings())
    missing = sorted(a for a in settings_aliases() if a not in in_bicep and a not in OPTIONAL_IN_AZURE)
    assert not missing, f"set these in infra/app/api.bicep appSettings or add to OPTIONAL_IN_AZURE: {missing}"


def test_optional_list_is_current_and_consistent():
    stale = sorted(set(OPTIONAL_IN_AZURE) - settings_aliases())
    assert not stale, f"OPTIONAL_IN_AZURE names settings the code no longer reads: {stale}"
    both = sorted(set(OPTIONAL_IN_AZURE) & set(bicep_app_settings()))
    assert not both, f"listed as optional but set by Bicep anyway: {both}"
    assert all(reason.strip() for reason in OPTIONAL_IN_AZURE.values())


def test_platform_settings_are_set_by_bicep():
    missing = sorted(PLATFORM_SETTINGS - set(bicep_app_settings()))
    assert not missing, missing


def test_bicep_sets_no_unknown_settings():
    """Catches typos: every app setting is read by the code, the platform, or announced."""
    known = settings_aliases() | PLATFORM_SETTINGS | ANNOUNCED_SETTINGS
    unknown = sorted(set(bicep_app_settings()) - known)
    assert not unknown, f"app settings nobody reads (typo?): {unknown}"


def test_app_settings_values():
    s = bicep_app_settings()
    assert s["PYTHON_ENABLE_INIT_INDEXING"] == "'1'"
    assert s["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert s["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert s["AZURE_CLIENT_ID"] == "identityClientId"
    auth = "'ClientId=${identityClientId};Authorization=AAD'"
    assert s["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == auth
    assert s["APPLICATIONINSIGHTS_CONNECTION_STRING"].endswith(".properties.ConnectionString")
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_API_VERSION"):
        assert s[name] in {"openAiEndpoint", "openAiDeployment", "openAiApiVersion"}, name
    for secret in ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "AzureWebJobsStorage"):
        assert secret not in s, f"{secret} must not be an app setting (keyless)"


def test_app_settings_array_is_what_the_site_uses():
    site = dict(resources(API, "Microsoft.Web/sites"))
    assert len(site) == 1
    (decl,) = site.values()
    used = get(body(decl), "properties", "siteConfig", "appSettings")
    assert re.fullmatch(r"concat\(\s*appSettings\s*,\s*extraAppSettings\s*\)", text(used)), text(used)


def test_local_settings_example_lists_every_setting():
    data = json.loads(EXAMPLE.read_text())
    assert data["IsEncrypted"] is False
    values = data["Values"]
    assert all(isinstance(v, str) for v in values.values()), "local.settings.json values must be strings"
    missing = sorted(settings_aliases() - set(values))
    assert not missing, f"add to local.settings.json.example: {missing}"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == ""
    assert values["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    for name in PROVIDER_SETTINGS:
        assert values.get(name, "") == "", f"{name} must be empty so the simulator is the default"


def test_local_settings_example_defaults_match_code(monkeypatch: pytest.MonkeyPatch):
    values = json.loads(EXAMPLE.read_text())["Values"]
    for name in values:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    from_example = Settings()
    assert from_example.provider == "simulator"
    for name, field in Settings.model_fields.items():
        if field.alias in PROVIDER_SETTINGS:
            continue
        assert getattr(from_example, name) == field.default, f"{field.alias}: example != code default"


# ---------------------------------------------------------------------------------------------
# Security properties
# ---------------------------------------------------------------------------------------------


def test_role_definition_ids_are_documented_built_ins():
    documented = {guid.lower() for guid in BUILT_IN_ROLES.values()}
    for path in bicep_files():
        for guid in GUID.findall(code_text(path)):
            assert guid.lower() in documented, f"{path.name}: unknown role/GUID {guid}"


def rbac_role_map() -> dict[str, str | None]:
    roles = declarations(RBAC, "variable")["roles"].named_children[-1]
    return {key: literal(value) for key, value in props(roles).items()}


def _role_assignments() -> list[dict[str, str]]:
    role_map = rbac_role_map()
    out = []
    for name, decl in resources(RBAC, "Microsoft.Authorization/roleAssignments"):
        obj = body(decl)
        role_def = text(get(obj, "properties", "roleDefinitionId"))
        match = re.fullmatch(
            r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions',\s*roles\.(\w+)\)", role_def
        )
        assert match, f"{name}: roleDefinitionId must be subscriptionResourceId(... roles.X): {role_def}"
        role_id = role_map[match.group(1)]
        principal = text(get(obj, "properties", "principalId"))
        guid_name = text(get(obj, "name"))
        assert principal in guid_name and f"roles.{match.group(1)}" in guid_name, (
            f"{name}: name must be guid(scope, principal, role) to stay unique and idempotent"
        )
        out.append(
            {
                "role": next(r for r, g in BUILT_IN_ROLES.items() if g == role_id),
                "principal": principal,
                "scope": text(get(obj, "scope")),
                "type": text(get(obj, "properties", "principalType")),
            }
        )
    return out


def test_required_role_assignments():
    have = {(a["role"], a["principal"], a["scope"]) for a in _role_assignments()}
    required = {
        ("Storage Blob Data Owner", "appPrincipalId", "storage"),
        ("Monitoring Metrics Publisher", "appPrincipalId", "applicationInsights"),
        ("Cognitive Services OpenAI User", "appPrincipalId", "openAi"),
        ("Cognitive Services OpenAI User", "developerPrincipalId", "openAi"),
    }
    assert required <= have, sorted(required - have)
    for a in _role_assignments():
        if a["principal"] == "appPrincipalId":
            assert a["type"] == "'ServicePrincipal'"


def test_role_map_ids_match_documented_names():
    role_map = rbac_role_map()
    expected = {re.sub(r"\W", "", n[0].lower() + n[1:]): g for n, g in BUILT_IN_ROLES.items()}
    for key, guid in role_map.items():
        assert expected.get(key.lower()) == guid or expected.get(key) == guid, (key, guid)


def test_no_secret_parameters_or_outputs():
    for path in bicep_files():
        for name, decl in declarations(path, "parameter").items():
            secure = any(d.startswith("@secure") for d in decorators_of(decl))
            assert not SECRET_NAME.search(name), f"{path.name}: parameter {name} is named like a secret"
            assert not (secure and has_default(decl)), f"{path.name}: secure parameter {name} has a value"
        for name, decl in declarations(path, "output").items():
            assert not SECRET_NAME.search(name), f"{path.name}: output {name} is named like a secret"
            assert not any(d.startswith("@secure") for d in decorators_of(decl)), f"{path.name}: {name}"
            value = text(decl.named_children[-1])
            assert not re.search(r"connectionstring|listkeys|primarykey|\bkey\b", value, re.I), (
                f"{path.name}: output {name} exposes {value}"
            )
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name, spec in params.items():
        assert not SECRET_NAME.search(name), f"main.parameters.json: {name} is named like a secret"
        assert "reference" not in spec, f"main.parameters.json: {name} pulls a Key Vault secret"


def test_no_list_keys_anywhere():
    for path in INFRA.rglob("*"):
        if path.is_file():
            assert "listkeys" not in path.read_text(errors="ignore").lower(), path


def test_local_auth_disabled_on_openai_and_app_insights():
    openai = resources(INFRA / "core" / "openai.bicep", "Microsoft.CognitiveServices/accounts")
    assert len(openai) == 1
    account = body(openai[0][1])
    assert literal(get(account, "kind")) == "OpenAI"
    assert text(get(account, "properties", "disableLocalAuth")) == "true"
    assert text(get(account, "properties", "customSubDomainName")) == "name"

    insights = resources(INFRA / "core" / "monitoring.bicep", "Microsoft.Insights/components")
    assert len(insights) == 1
    assert text(get(body(insights[0][1]), "properties", "disableLocalAuth", ci=True)) == "true"


def test_storage_has_no_shared_key_access():
    accounts = resources(INFRA / "core" / "storage.bicep", "Microsoft.Storage/storageAccounts")
    assert len(accounts) == 1
    properties = get(body(accounts[0][1]), "properties")
    assert text(get(properties, "allowSharedKeyAccess")) == "false"
    assert text(get(properties, "allowBlobPublicAccess")) == "false"


def test_stream_store_container_lifecycle_rule_and_app_settings():
    """Resumable streams: a private container, swept after a day, reached keylessly by the app."""
    storage_bicep = INFRA / "core" / "storage.bicep"
    containers = dict(resources(storage_bicep, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    stream = body(containers["streamContainer"])
    assert text(get(stream, "name")) == "streamContainerName"
    assert literal(get(stream, "properties", "publicAccess")) == "None"
    storage_module = body(declarations(MAIN, "module")["storage"])
    assert literal(get(storage_module, "params", "streamContainerName")) == Settings().stream_store_container

    (policy,) = resources(storage_bicep, "Microsoft.Storage/storageAccounts/managementPolicies")
    policy_body = body(policy[1])
    assert literal(get(policy_body, "name")) == "default"
    (rule,) = get(policy_body, "properties", "policy", "rules").named_children
    assert text(get(rule, "enabled")) == "true" and literal(get(rule, "type")) == "Lifecycle"
    filters = get(rule, "definition", "filters")
    assert {literal(t) for t in get(filters, "blobTypes").named_children} == {"appendBlob", "blockBlob"}
    (prefix,) = get(filters, "prefixMatch").named_children
    assert text(prefix) == "'${streamContainer.name}/'", "the rule must cover the stream container only"
    delete = get(rule, "definition", "actions", "baseBlob", "delete")
    assert text(get(delete, "daysAfterModificationGreaterThan")) == "streamRetentionDays"
    retention = declarations(storage_bicep, "parameter")["streamRetentionDays"]
    assert text(retention.named_children[-1]) == "1"

    s = bicep_app_settings()
    assert s["CHAT_STREAM_STORE"] == "'blob'"
    assert s["CHAT_STREAM_STORE_URL"] == "storageBlobEndpoint"
    assert s["CHAT_STREAM_STORE_CONTAINER"] == "streamContainerName"
    assert "CHAT_STREAM_STORE_CONNECTION_STRING" not in s, "keyless: never a connection string in Azure"
    api = body(declarations(MAIN, "module")["api"])
    assert text(get(api, "params", "streamContainerName")) == "storage.outputs.streamContainerName"
    assert text(get(api, "params", "storageBlobEndpoint")) == "storage.outputs.blobEndpoint"


def test_no_forbidden_flex_settings_in_bicep():
    assert not FORBIDDEN_ON_FLEX & set(bicep_app_settings())
    for path in bicep_files():
        code = code_text(path)
        for name in FORBIDDEN_ON_FLEX:
            assert name not in code, f"{path.name} mentions {name} outside comments"


# ---------------------------------------------------------------------------------------------
# Flex Consumption shape
# ---------------------------------------------------------------------------------------------


def test_flex_plan_and_function_app():
    (plan,) = resources(API, "Microsoft.Web/serverfarms")
    plan_body = body(plan[1])
    assert literal(get(plan_body, "sku", "name")) == "FC1"
    assert literal(get(plan_body, "sku", "tier")) == "FlexConsumption"
    assert text(get(plan_body, "properties", "reserved")) == "true"

    (site,) = resources(API, "Microsoft.Web/sites")
    site_body = body(site[1])
    assert literal(get(site_body, "kind")) == "functionapp,linux"
    assert literal(get(site_body, "identity", "type")) == "UserAssigned"
    assert "'azd-service-name': serviceName" in text(get(site_body, "tags"))
    cfg = get(site_body, "properties", "functionAppConfig")
    assert literal(get(cfg, "runtime", "name")) == "python"
    assert text(get(cfg, "runtime", "version")) == "pythonVersion"
    storage = get(cfg, "deployment", "storage")
    assert literal(get(storage, "type")) == "blobContainer"
    assert literal(get(storage, "authentication", "type")) == "UserAssignedIdentity"
    assert text(get(storage, "authentication", "userAssignedIdentityResourceId")) == "identityId"
    scale = get(cfg, "scaleAndConcurrency")
    assert text(get(scale, "maximumInstanceCount")) == "maximumInstanceCount"
    assert text(get(scale, "instanceMemoryMB")) == "instanceMemoryMB"
    assert text(get(scale, "triggers", "http", "perInstanceConcurrency")) == "httpPerInstanceConcurrency"
    cors = get(site_body, "properties", "siteConfig", "cors", "allowedOrigins")
    assert text(cors) == "corsHandledBy == 'platform' ? corsOriginList : []"


def test_main_wires_service_name_python_version_and_concurrency_default():
    api = body(declarations(MAIN, "module")["api"])
    assert literal(get(api, "params", "serviceName")) == "api"
    assert text(get(api, "params", "pythonVersion")) == "pythonVersion"
    python = declarations(MAIN, "parameter")["pythonVersion"]
    assert literal(python.named_children[-1]) == "3.12"
    assert "@allowed(['3.11', '3.12', '3.13'])" in decorators_of(python)
    concurrency = declarations(MAIN, "parameter")["httpPerInstanceConcurrency"]
    default = int(text(concurrency.named_children[-1]))
    assert default > 1, "one open stream must not pin a whole instance"


def test_module_calls_match_module_parameters():
    """A poor man's type check: every module gets exactly known params and all required ones."""
    for name, decl in declarations(MAIN, "module").items():
        module_path = INFRA / literal(decl.named_children[1])
        declared = declarations(module_path, "parameter")
        passed = set(props(get(body(decl), "params")))
        unknown = passed - set(declared)
        assert not unknown, f"module {name}: unknown params {sorted(unknown)}"
        required = {p for p, d in declared.items() if not has_default(d)}
        assert required <= passed, f"module {name}: missing params {sorted(required - passed)}"


def test_module_outputs_used_in_main_exist():
    modules = {n: INFRA / literal(d.named_children[1]) for n, d in declarations(MAIN, "module").items()}
    for mod, attr in re.findall(r"\b(\w+)\.outputs\.(\w+)", code_text(MAIN)):
        assert attr in declarations(modules[mod], "output"), f"{mod}.outputs.{attr} does not exist"


def test_parameters_file_matches_main():
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = declarations(MAIN, "parameter")
    assert set(params) <= set(declared), sorted(set(params) - set(declared))
    required = {p for p, d in declared.items() if not has_default(d)}
    assert required <= set(params), sorted(required - set(params))
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert text(declarations(MAIN, "parameter")["principalId"].named_children[-1]) == "''"


def test_main_outputs():
    outputs = declarations(MAIN, "output")
    for name in (
        "CHAT_ENDPOINT_URL",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_API_VERSION",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_RESOURCE_GROUP",
    ):
        assert name in outputs, name
    endpoint = declarations(API, "output")["chatEndpoint"].named_children[-1]
    assert text(endpoint) == "'https://${functionApp.properties.defaultHostName}/api/chat'"
    assert "targetScope = 'subscription'" in code_text(MAIN)


# ---------------------------------------------------------------------------------------------
# azd project files
# ---------------------------------------------------------------------------------------------


def test_azure_yaml():
    data = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert data["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    assert data["requiredVersions"] == {"azd": ">= 1.23.13"}
    hooks = {
        "preprovision": "preprovision",
        "postprovision": "write-local-settings",
        "predeploy": "predeploy",
    }
    for event, stem in hooks.items():
        hook = data["hooks"][event]
        for flavour, script in (("posix", f"{stem}.sh"), ("windows", f"{stem}.ps1")):
            run = hook[flavour]["run"]
            assert run.endswith(script)
            assert (ROOT / run).is_file(), run
        assert (INFRA / "scripts" / f"{stem}.sh").stat().st_mode & stat.S_IXUSR
    # The first deploy must not race role propagation: the predeploy hook may not be skipped on error.
    assert "continueOnError" not in data["hooks"]["predeploy"]["posix"]


def test_funcignore_excludes_non_runtime_files():
    lines = {ln.strip() for ln in (ROOT / ".funcignore").read_text().splitlines()}
    for entry in (".venv", "tests", "bench", "infra", "docs", ".git*", "local.settings.json"):
        assert entry in lines, entry


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_postprovision_hook_writes_local_settings_idempotently(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "infra" / "scripts").mkdir(parents=True)
    shutil.copy(INFRA / "scripts" / "write-local-settings.sh", repo / "infra" / "scripts")
    shutil.copy(EXAMPLE, repo)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    azd = fake_bin / "azd"
    azd.write_text(
        "#!/bin/sh\n"
        "printf '%s\\n' 'AZURE_OPENAI_ENDPOINT=\"https://oai-test.openai.azure.com/\"' "
        "'AZURE_OPENAI_DEPLOYMENT=\"chat-dep\"' 'AZURE_OPENAI_API_VERSION=\"2024-10-21\"' "
        "'AZURE_FUNCTION_APP_NAME=\"func-x\"'\n"
    )
    azd.chmod(0o755)
    python_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{python_dir}{os.pathsep}{os.environ['PATH']}"}

    def run() -> str:
        subprocess.run(
            ["sh", "infra/scripts/write-local-settings.sh"],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
        )
        return (repo / "local.settings.json").read_text()

    first = run()
    values = json.loads(first)["Values"]
    assert values["AZURE_OPENAI_ENDPOINT"] == "https://oai-test.openai.azure.com/"
    assert values["AZURE_OPENAI_DEPLOYMENT"] == "chat-dep"
    assert values["AZURE_OPENAI_API_KEY"] == ""
    assert values["AZURE_CLIENT_ID"] == ""
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert settings_aliases() <= set(values)

    # A developer's own edits survive; a second run changes nothing else.
    data = json.loads(first)
    data["Values"]["CHAT_LOG_LEVEL"] = "DEBUG"
    (repo / "local.settings.json").write_text(json.dumps(data, indent=2) + "\n")
    second = run()
    assert json.loads(second)["Values"]["CHAT_LOG_LEVEL"] == "DEBUG"
    assert run() == second
