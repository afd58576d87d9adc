"""One error catalogue: every code the app can send is built in chatstream/errors.py and documented."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

CHATSTREAM = REPO_ROOT / "chatstream"


def _codes_built_in(path: Path) -> set[str]:
    """The literal codes of every `ChatError(status, "code", ...)` call in a module."""
    codes = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "ChatError"
            and len(node.args) > 1
        ):
            code = node.args[1]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                codes.add(code.value)
    return codes


def test_every_error_is_built_in_the_catalogue_only():
    elsewhere = {
        str(path.relative_to(REPO_ROOT)): codes
        for path in sorted(CHATSTREAM.rglob("*.py"))
        if path.name != "errors.py" and (codes := _codes_built_in(path))
    }
    assert elsewhere == {}, "build ChatErrors in chatstream/errors.py"
    assert "ChatError(" not in "".join(p.read_text() for p in (REPO_ROOT / "chains").rglob("*.py"))


def test_every_code_in_the_catalogue_is_documented_for_callers():
    codes = _codes_built_in(CHATSTREAM / "errors.py")
    assert {"internal_error", "upstream_interrupted", "deadline_exceeded", "rate_limited"} <= codes
    protocol = (REPO_ROOT / "docs" / "protocol.md").read_text()
    undocumented = sorted(code for code in codes if f"`{code}`" not in protocol)
    assert undocumented == []
