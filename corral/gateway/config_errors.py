"""One-line messages for pydantic validation errors in the gateway's config files and admin requests."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError


def describe(error: ValidationError, union_tags: Collection[str] = ()) -> str:
    """The first problem of a ValidationError on one line, as ``key.path: message``.

    ``union_tags`` are the tags of discriminated unions: pydantic puts the tag in the path after a list
    index (``checks.0.pii.action``), where a user reading the file sees only ``checks.0.action``.
    """
    problems = error.errors(include_url=False)
    # A misspelt key also leaves the real one missing: naming the misspelling says more.
    first = min(problems, key=lambda problem: problem["type"] != "extra_forbidden")
    path = first["loc"]
    location = [part for index, part in enumerate(path)
                if not (part in union_tags and index > 0 and isinstance(path[index - 1], int))]
    message = {"extra_forbidden": "unknown key", "missing": "required key missing"}.get(first["type"], first["msg"])
    message = message.removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    if not location and message.split(" ")[0].endswith(":"):  # a whole-file check that names its own key
        return f"{message}{more}".replace("\n", " ")
    where = ".".join(str(part) for part in location) or "(top level)"
    return f"{where}: {message}{more}".replace("\n", " ")
