"""The startup banner: every function's URL and a curl line that streams a POST route."""

from __future__ import annotations

import shlex

from funchost.registry import HttpFunction

_EXAMPLE_BODY = '{"user":"hello"}'


def _example_path(function: HttpFunction) -> str:
    """A concrete path for the template (route parameters shown as {name})."""
    return "/" + function.template.template if function.template.template else "/"


def banner(functions: list[HttpFunction], base_url: str, local_settings_note: str = "") -> str:
    """Human-readable summary printed after the server listens."""
    lines = ["", "funchost: local Azure Functions host (no Core Tools needed)", ""]
    if local_settings_note:
        lines += [local_settings_note, ""]
    if not functions:
        lines.append("No HTTP functions found.")
    else:
        lines.append("Functions:")
        width = max(len(f.name) for f in functions)
        for f in functions:
            methods = ",".join(sorted(f.methods)) if f.methods else "ALL"
            lines.append(f"  {f.name:<{width}}  [{methods}] {base_url}{_example_path(f)}")
        keyed = [f for f in functions if f.requires_key]
        if keyed:
            lines += [
                "",
                "Authorization is disabled locally (as with Core Tools). In Azure these need a key:",
            ]
            lines += [f"  {f.name} (auth_level={f.auth_level})" for f in keyed]
        pages = [
            f
            for f in functions
            if f.methods and "GET" in f.methods and not f.template.parameter_names and not f.requires_key
        ]
        if pages:
            lines += ["", "Open in a browser:"]
            lines += [f"  {base_url}{_example_path(f)}" for f in pages]
        posts = [f for f in functions if f.methods is None or "POST" in f.methods]
        if posts:
            lines += ["", "Try (streams the response as it is produced):"]
            for f in posts:
                url = base_url + _example_path(f)
                globoff = "-g " if "{" in url else ""  # curl would expand {id} otherwise
                lines.append(
                    f"  curl -N {globoff}{shlex.quote(url)} -H 'Content-Type: application/json' "
                    f"-d {shlex.quote(_EXAMPLE_BODY)}"
                )
    lines += ["", "Press Ctrl+C to stop.", ""]
    return "\n".join(lines)
