"""The README stays true: it documents every setting the code reads and the commands CI runs."""

from __future__ import annotations

import re

from chatstream.settings import Settings
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _documented_settings() -> set[str]:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_configuration_table_lists_every_setting_the_code_reads():
    read = {field.alias for field in Settings.model_fields.values()}
    documented = _documented_settings()
    assert read - documented == set(), "settings missing from the README's configuration table"
    extra = (
        documented
        - read
        - {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}
    )
    assert extra == set(), "the README documents settings the code does not read"


def test_ci_runs_exactly_the_readme_test_command():
    assert "make run" in README and "make test" in README
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert "make test" in commands
