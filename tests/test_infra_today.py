"""Deploying on today's Azure, offline: azd parameters, model lifecycle, Flex regions, Bicep names,
Python 3.11-3.13 requirement markers, the lock the build installs, and the azd hooks.

Bicep is read with the same tree-sitter grammar as tests/test_infra.py; nothing here needs Azure,
azd, az or the Bicep CLI (fake azd/az scripts stand in for them in the hook tests).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.test_infra import (
    _PARSER,
    INFRA,
    MAIN,
    ROOT,
    bicep_files,
    declarations,
    decorators_of,
    has_default,
    root,
    text,
    walk,
)

# ---------------------------------------------------------------------------------------------
# Facts checked on 2026-12-03 (sources in docs/deploy.md)
# ---------------------------------------------------------------------------------------------

CHECKED = dt.date(2026, 12, 3)

#: Microsoft Learn "Model retirement schedule" (Azure OpenAI, ms.date 2026-09-02) and the lifecycle
#: policy (GA versions: new customers for 12 months from launch, existing ones up to the retirement date).
#: (model, version) -> (lifecycle, new customers until, retirement date)
MODEL_LIFECYCLE: dict[tuple[str, str], tuple[str, dt.date, dt.date]] = {
    ("gpt-4o-mini", "2024-07-18"): ("Deprecated", dt.date(2025, 7, 18), dt.date(2027, 4, 14)),
    ("gpt-4.1-mini", "2025-04-14"): ("Legacy", dt.date(2026, 4, 14), dt.date(2027, 4, 14)),
    ("gpt-5-mini", "2025-08-07"): ("GA", dt.date(2026, 8, 7), dt.date(2027, 2, 9)),
    ("gpt-5.1", "2025-11-13"): ("GA", dt.date(2026, 11, 13), dt.date(2027, 5, 15)),
    ("gpt-5.2", "2025-12-11"): ("GA", dt.date(2026, 12, 11), dt.date(2027, 6, 8)),
    ("gpt-5.4", "2026-03-05"): ("GA", dt.date(2027, 3, 5), dt.date(2027, 9, 2)),
    ("gpt-5.4-mini", "2026-03-17"): ("GA", dt.date(2027, 3, 17), dt.date(2027, 9, 21)),
    ("gpt-5.5", "2026-04-24"): ("GA", dt.date(2027, 4, 24), dt.date(2027, 10, 26)),
}

#: Flex Consumption regions: Azure-Samples/functions-quickstart-python-http-azd infra/main.bicep
#: (2025-11) without the canary region eastus2euap.
FLEX_REGIONS = set(
    """australiaeast australiasoutheast brazilsouth canadacentral centralindia centralus eastasia eastus
    eastus2 francecentral germanywestcentral italynorth japaneast koreacentral northcentralus northeurope
    norwayeast southafricanorth southcentralus southeastasia southindia spaincentral swedencentral uaenorth
    uksouth ukwest westcentralus westeurope westus westus2 westus3""".split()
)

PARAMS = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
AZD_REF = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)(?:=(.*))?\}$")


def param_default(name: str) -> str | None:
    decl = declarations(MAIN, "parameter")[name]
    if not has_default(decl):
        return None
    value = text(decl.named_children[-1])
    return value[1:-1] if value.startswith("'") else value


def azd_default(name: str) -> str | None:
    match = AZD_REF.match(PARAMS[name]["value"])
    assert match, f"{name}: value must be one ${{AZURE_...}} reference"
    return match.group(2)


# ---------------------------------------------------------------------------------------------
# 1. Models (and everything else) as azd environment parameters
# ---------------------------------------------------------------------------------------------


def test_every_azd_reference_maps_to_a_declared_param_with_the_same_default():
    declared = declarations(MAIN, "parameter")
    for name, spec in PARAMS.items():
        assert name in declared, f"main.parameters.json sets {name}, which main.bicep does not declare"
        match = AZD_REF.match(spec["value"])
        assert match, f"{name}: {spec['value']!r} is not a ${{VAR}} / ${{VAR=default}} reference"
        azd = match.group(2)
        bicep = param_default(name)
        if azd is None:
            # No azd default: azd passes "" when the variable is unset, so Bicep must treat "" as unset.
            assert bicep in (None, ""), f"{name}: Bicep default {bicep!r} but azd passes '' when unset"
        else:
            assert bicep == azd, f"{name}: azd default {azd!r} != Bicep default {bicep!r}"


def test_model_name_version_sku_and_capacity_are_azd_parameters():
    expected = {
        "chatModelName": "AZURE_OPENAI_CHAT_MODEL",
        "chatModelVersion": "AZURE_OPENAI_CHAT_MODEL_VERSION",
        "chatDeploymentName": "AZURE_OPENAI_CHAT_DEPLOYMENT",
        "chatDeploymentSkuName": "AZURE_OPENAI_CHAT_SKU",
        "chatDeploymentCapacity": "AZURE_OPENAI_CHAT_CAPACITY",
        "pythonVersion": "AZURE_PYTHON_VERSION",
        "openAiRestore": "AZURE_OPENAI_RESTORE",
    }
    for param, variable in expected.items():
        assert AZD_REF.match(PARAMS[param]["value"]).group(1) == variable, param
    assert azd_default("chatDeploymentSkuName") == "GlobalStandard"
    assert int(azd_default("chatDeploymentCapacity")) >= 1


def test_default_model_is_a_current_ga_model_new_subscriptions_can_deploy():
    model, version = azd_default("chatModelName"), azd_default("chatModelVersion")
    assert (model, version) in MODEL_LIFECYCLE, f"{model} {version}: check the retirement schedule, add it"
    lifecycle, new_customers_until, retires = MODEL_LIFECYCLE[model, version]
    assert model.startswith("gpt-5"), "the default is a gpt-5 family model (as the Azure chat quickstart)"
    assert lifecycle == "GA"
    # Three months of headroom at the check date, so a fresh subscription's `azd up` does not meet
    # ServiceModelDeprecating soon after; re-check (docs/deploy.md) before this table goes stale.
    assert new_customers_until >= CHECKED + dt.timedelta(days=90), (model, version, new_customers_until)
    assert retires > new_customers_until


def test_known_deprecated_defaults_are_gone():
    """The 2024 default answered ServiceModelDeprecating on new deployments."""
    for param in ("chatModelName", "chatModelVersion"):
        assert "gpt-4o" not in (param_default(param) or "")
    default = (param_default("chatModelName"), param_default("chatModelVersion"))
    assert default != ("gpt-4o-mini", "2024-07-18")


def test_docs_state_the_default_model_and_the_check_date():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert f"`{azd_default('chatModelName')}`" in doc and azd_default("chatModelVersion") in doc
    assert CHECKED.isoformat() in doc
    assert "AZURE_OPENAI_CHAT_MODEL" in doc and "az cognitiveservices usage list" in doc


def test_deployment_name_defaults_to_the_model_name():
    code = text(declarations(MAIN, "variable")["chatDeployment"].named_children[-1])
    assert code == "empty(chatDeploymentName) ? chatModelName : chatDeploymentName"
    assert "deploymentName: chatDeployment\n" in (MAIN.read_text())


# ---------------------------------------------------------------------------------------------
# 3. First deploy: regions, soft-deleted accounts, role propagation
# ---------------------------------------------------------------------------------------------


def allowed_values(decl) -> set[str]:
    for deco in decorators_of(decl):
        if deco.startswith("@allowed("):
            return set(re.findall(r"'([^']*)'", deco))
    return set()


def test_location_is_an_allowed_list_of_flex_regions():
    location = declarations(MAIN, "parameter")["location"]
    allowed = allowed_values(location)
    assert allowed == FLEX_REGIONS
    assert not any("euap" in r for r in allowed), "canary regions are not for a sample deployment"


def test_openai_account_can_be_restored_after_azd_down_without_purge():
    openai = (INFRA / "core" / "openai.bicep").read_text()
    assert "restore: restore" in openai
    assert "restore: openAiRestore" in MAIN.read_text()


def test_storage_role_creation_time_reaches_the_azd_env():
    outputs = declarations(MAIN, "output")
    assert text(outputs["AZURE_APP_STORAGE_ROLE_CREATED_ON"].named_children[-1]) == (
        "rbac.outputs.appStorageRoleCreatedOn"
    )
    rbac_out = declarations(INFRA / "app" / "rbac.bicep", "output")["appStorageRoleCreatedOn"]
    assert text(rbac_out.named_children[-1]) == "appBlobOwner.properties.createdOn"


# ---------------------------------------------------------------------------------------------
# 3. Every identifier a Bicep expression uses is declared (or a built-in)
# ---------------------------------------------------------------------------------------------

#: Bicep built-in functions and decorators (learn.microsoft.com bicep-functions / parameters).
BICEP_FUNCTIONS = set(
    """any array base64 base64ToJson base64ToString bool buildUri coalesce concat contains dataUri
    dataUriToString dateTimeAdd dateTimeFromEpoch dateTimeToEpoch deployer deployment empty endsWith
    environment extensionResourceId fail filter first flatten format getSecret groupBy guid indexOf int
    intersection items join json last lastIndexOf length listAccountSas listKeys list loadFileAsBase64
    loadJsonContent loadTextContent loadYamlContent managementGroup managementGroupResourceId map
    mapValue max min newGuid objectKeys padLeft pickZones providers range readEnvironmentVariable reduce
    reference replace resourceGroup resourceId shallowMerge skip sort split startsWith string subscription
    subscriptionResourceId substring take tenant tenantResourceId toLower toObject toUpper trim union
    uniqueString uri uriComponent uriComponentToString utcNow
    allowed batchSize description discriminator export maxLength maxValue metadata minLength minValue
    onlyIfNotExists sealed secure""".split()
)
BICEP_NAMESPACES = {"az", "sys"}
DECLARATIONS = {
    "parameter_declaration",
    "variable_declaration",
    "resource_declaration",
    "module_declaration",
    "output_declaration",
    "type_declaration",
    "user_defined_function",
}


def unresolved_identifiers(tree_root) -> list[str]:
    """Identifiers used in expressions that are neither declared in the file nor Bicep built-ins."""
    declared = set()
    for node in tree_root.named_children:
        if node.type in DECLARATIONS:
            declared.add(text(node.named_children[0]))
        elif node.type == "import_functionality":
            declared.update(text(c) for c in node.named_children if c.type == "identifier")

    def local_names(node) -> set[str]:
        """Lambda parameters, loop variables and function parameters visible at node."""
        names: set[str] = set()
        scope = node.parent
        while scope is not None:
            if scope.type == "lambda_expression":
                params = scope.named_children[0]
                names.update(text(i) for i in walk(params) if i.type == "identifier")
            elif scope.type == "for_statement":
                for loop in walk(scope):
                    if loop.type in ("loop_variable", "loop_enumerator"):
                        names.add(text(loop))
            elif scope.type == "user_defined_function":
                params = next(c for c in scope.named_children if c.type == "parameters")
                names.update(
                    text(p.named_children[0]) for p in params.named_children if p.type == "parameter"
                )
            scope = scope.parent
        return names

    bad = []
    for node in walk(tree_root):
        if node.type != "identifier":
            continue
        parent = node.parent
        index = parent.children.index(node)
        name = text(node)
        if parent.type in DECLARATIONS and node == parent.named_children[0]:
            continue  # the declared name itself
        if parent.type == "object_property" and index == 0:
            continue  # a property key
        if parent.type in ("import_functionality", "parameter", "type", "object_type"):
            continue
        if parent.type == "lambda_expression" and index == 0:
            continue  # single lambda parameter
        if parent.type == "parenthesized_expression" and parent.parent.type == "lambda_expression":
            if parent == parent.parent.named_children[0]:
                continue  # lambda parameter list
        if parent.type == "call_expression" and index == 0:
            if name in BICEP_FUNCTIONS or name in declared:
                continue
            bad.append(f"line {node.start_point[0] + 1}: unknown function {name}()")
            continue
        if name in declared or name in BICEP_NAMESPACES or name in local_names(node):
            continue
        bad.append(f"line {node.start_point[0] + 1}: {name} is not declared")
    return bad


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_identifier_resolves(path: Path):
    assert unresolved_identifiers(root(path)) == []


def test_identifier_check_catches_typos_and_accepts_scopes():
    good = b"""param items array
var names = [for (item, i) in items: '${item.name}-${i}']
var kept = filter(names, n => !empty(n))
var pairs = map(items, (a, b) => a)
func twice(n int) int => n * 2
output total int = twice(length(kept))
"""
    tree = _PARSER.parse(good)
    assert not tree.root_node.has_error
    assert unresolved_identifiers(tree.root_node) == []
    bad = _PARSER.parse(b"param location string\nvar x = locaton\nvar y = toLowr(location)\nvar z = n\n")
    problems = unresolved_identifiers(bad.root_node)
    assert any("locaton" in p for p in problems)
    assert any("toLowr" in p for p in problems)
    assert any(p.endswith("n is not declared") for p in problems)


# ---------------------------------------------------------------------------------------------
# 5. Python 3.11-3.13 and 6. reproducible installs
# ---------------------------------------------------------------------------------------------


def requirements(path: Path) -> list[Requirement]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def env_for(python: str) -> dict[str, str]:
    return {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}


def selected(python: str) -> dict[str, Requirement]:
    """The requirements.txt lines pip applies on Linux (Flex) for a Python version."""
    env = env_for(python) | {"sys_platform": "linux", "platform_system": "Linux"}
    return {
        canonicalize_name(r.name): r
        for r in requirements(ROOT / "requirements.txt")
        if r.marker is None or r.marker.evaluate(env)
    }


@pytest.mark.parametrize(
    ("python", "admits", "rejects"),
    [("3.11", "1.26.0", "2.3.0"), ("3.12", "1.26.0", "2.3.0"), ("3.13", "2.3.0", "1.26.0")],
)
def test_requirement_markers_pick_the_azure_functions_major_per_python(python, admits, rejects):
    chosen = selected(python)
    functions = chosen["azure-functions"]
    assert Version(admits) in functions.specifier and Version(rejects) not in functions.specifier
    assert ("azure-functions-runtime" in chosen) == (python == "3.13")


def lock_pins(python: str) -> dict[str, Version]:
    env = env_for(python)
    pins = {}
    for req in requirements(ROOT / "requirements.lock"):
        if req.marker is None or req.marker.evaluate(env):
            (spec,) = req.specifier
            assert spec.operator == "==", f"lock lines pin exactly: {req}"
            name = canonicalize_name(req.name)
            assert name not in pins, f"{name} pinned twice for Python {python}"
            pins[name] = Version(spec.version)
    return pins


def test_requirements_apply_the_lock_and_the_package_ships_it():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "-c requirements.lock" in lines
    ignored = {ln.strip() for ln in (ROOT / ".funcignore").read_text().splitlines()}
    assert not ignored & {"requirements.lock", "*.lock", "requirements*"}


#: Floors set elsewhere for a known fix rather than from the tested venvs (tests run on the lock pin).
FLOOR_EXCEPTIONS = {"uvicorn"}


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_lock_pins_every_requirement_within_its_range_and_floors_were_tested(python):
    pins = lock_pins(python)
    assert pins, f"requirements.lock has nothing for Python {python}"
    tested: dict[str, set[Version]] = {}
    for py in ("3.11", "3.12", "3.13"):
        for name, version in lock_pins(py).items():
            tested.setdefault(name, set()).add(version)
    for name, req in selected(python).items():
        assert name in pins, f"{name} is not pinned for Python {python}"
        assert pins[name] in req.specifier, f"{name}=={pins[name]} is outside {req.specifier}"
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert floors, f"{name}: give it a floor (a version the tests passed on)"
        if name not in FLOOR_EXCEPTIONS:
            ran_on = sorted(map(str, tested[name]))
            assert floors[0] in tested[name], f"{name}>={floors[0]}: the tests ran on {ran_on}"


def test_this_test_run_uses_the_locked_versions():
    """The tests that passed are evidence for the lock only if they ran on it."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python not in ("3.11", "3.12", "3.13"):
        pytest.skip(f"no lock for Python {python}")
    drift = {}
    for name, pinned in lock_pins(python).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            drift[name] = (str(installed), str(pinned))
    assert not drift, f"installed != requirements.lock (run make, or regenerate the lock): {drift}"


def test_lock_generator_marks_versions_that_differ_between_pythons():
    sys.path.insert(0, str(INFRA / "scripts"))
    try:
        import lock_requirements
    finally:
        sys.path.pop(0)
    out = lock_requirements.render(
        {"3.12": {"a": "1.0", "b": "2.0"}, "3.11": {"a": "1.0", "b": "1.0"}, "3.13": {"a": "1.0", "c": "3"}}
    )
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert lines == [
        "a==1.0",
        'b==1.0 ; python_version == "3.11"',
        'b==2.0 ; python_version == "3.12"',
        'c==3 ; python_version == "3.13"',
    ]


@pytest.mark.parametrize(("version", "ok"), [("3.10.13", False), ("3.12.1", True), ("3.13.0", True)])
def test_make_accepts_python_311_to_313(version, ok):
    python = Path.home() / ".pyenv" / "versions" / version / "bin" / f"python{version.rsplit('.', 1)[0]}"
    if not python.exists():
        pytest.skip(f"no Python {version} here")
    result = subprocess.run(
        ["make", "-s", "check-python", f"PYTHON={python}"], cwd=ROOT, capture_output=True, text=True
    )
    assert (result.returncode == 0) == ok, result.stderr


# ---------------------------------------------------------------------------------------------
# 3. The azd hooks, with fake azd and az on PATH
# ---------------------------------------------------------------------------------------------


def fake_tools(tmp_path: Path, env_values: dict[str, str], deleted: list[dict] | None) -> dict[str, str]:
    """PATH with an azd that serves env_values and records `env set`, and (unless deleted is None) an az."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    values = "\n".join(f'{k}="{v}"' for k, v in env_values.items())
    (bin_dir / "azd").write_text(
        "#!/bin/sh\n"
        f"if [ \"$1 $2\" = \"env get-values\" ]; then printf '%s\\n' '{values}'; exit 0; fi\n"
        f'if [ "$1 $2" = "env set" ]; then echo "$3=$4" >> "{tmp_path}/azd-set.log"; exit 0; fi\n'
        "exit 1\n"
    )
    if deleted is not None:
        (bin_dir / "az").write_text(
            "#!/bin/sh\n"
            f'echo "$@" >> "{tmp_path}/az.log"\n'
            f'case "$*" in *list-deleted*) cat "{tmp_path}/deleted.json";; esac\n'
        )
        (tmp_path / "deleted.json").write_text(json.dumps(deleted))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    path = [str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    return {**os.environ, "PATH": os.pathsep.join(path)}


def run_hook(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INFRA / "scripts" / f"{name}.sh")], env=env, capture_output=True, text=True, timeout=60
    )


AZD_ENV = {"AZURE_ENV_NAME": "demo", "AZURE_SUBSCRIPTION_ID": "sub-1", "AZURE_LOCATION": "swedencentral"}
DELETED = {
    "id": "/subscriptions/sub-1/providers/Microsoft.CognitiveServices/locations/swedencentral/"
    "resourceGroups/rg-demo/deletedAccounts/oai-abc123",
    "name": "oai-abc123",
    "location": "swedencentral",
}
OTHER_ENV = {**DELETED, "id": DELETED["id"].replace("rg-demo", "rg-other"), "name": "oai-zzz"}


def test_preprovision_restores_this_environments_soft_deleted_account(tmp_path: Path):
    result = run_hook("preprovision", fake_tools(tmp_path, AZD_ENV, [OTHER_ENV, DELETED]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "azd-set.log").read_text() == "AZURE_OPENAI_RESTORE=true\n"
    assert "oai-abc123" in result.stdout


def test_preprovision_purges_when_asked(tmp_path: Path):
    env = fake_tools(tmp_path, AZD_ENV, [DELETED]) | {"CHATSTREAM_SOFT_DELETED": "purge"}
    result = run_hook("preprovision", env)
    assert result.returncode == 0, result.stderr
    assert "account purge -n oai-abc123 -g rg-demo -l swedencentral" in (tmp_path / "az.log").read_text()
    assert (tmp_path / "azd-set.log").read_text() == "AZURE_OPENAI_RESTORE=false\n"


def test_preprovision_clears_a_stale_restore_flag(tmp_path: Path):
    result = run_hook("preprovision", fake_tools(tmp_path, AZD_ENV, [OTHER_ENV]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "azd-set.log").read_text() == "AZURE_OPENAI_RESTORE=false\n"


def test_preprovision_without_az_warns_and_carries_on(tmp_path: Path):
    result = run_hook("preprovision", fake_tools(tmp_path, AZD_ENV, None))
    assert result.returncode == 0, result.stderr
    assert "AZURE_OPENAI_RESTORE" in result.stdout
    assert not (tmp_path / "azd-set.log").exists()


def test_predeploy_waits_while_the_storage_role_is_new(tmp_path: Path):
    now = dt.datetime.now(dt.timezone.utc).isoformat()  # noqa: UP017
    env = fake_tools(tmp_path, AZD_ENV | {"AZURE_APP_STORAGE_ROLE_CREATED_ON": now}, None)
    result = run_hook("predeploy", env | {"CHATSTREAM_ROLE_PROPAGATION_SECONDS": "1"})
    assert result.returncode == 0, result.stderr
    assert "waiting" in result.stdout and "propagate" in result.stdout


def test_predeploy_does_not_wait_for_an_old_role(tmp_path: Path):
    env = fake_tools(tmp_path, AZD_ENV | {"AZURE_APP_STORAGE_ROLE_CREATED_ON": "2026-01-01T00:00:00Z"}, None)
    result = run_hook("predeploy", env)
    assert result.returncode == 0, result.stderr
    assert "waiting" not in result.stdout
