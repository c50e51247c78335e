"""README.md's "Using it" command lines, as argument lists: the tests run them as written.

Placeholders such as ``<appeal id>`` are filled from ``ids`` (by the text between the brackets),
or with a well-formed request id nobody has.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["README", "readme_example", "readme_examples"]

README = Path(__file__).parents[1] / "README.md"
_UNKNOWN_ID = "0190aaaa-0000-7000-8000-000000000001"


def readme_examples(ids: Mapping[str, str] | None = None) -> list[list[str]]:
    """Each ``.venv/bin/greenchannel ...`` line of the "Using it" block, continuations joined,
    comments dropped, without the program name."""
    known = ids or {}
    block = README.read_text(encoding="utf-8").split("## Using it", 1)[1].split("```sh", 1)[1]
    text = block.split("```", 1)[0].replace("\\\n", " ")
    text = re.sub(r"<([^>]+)>", lambda match: known.get(match.group(1), _UNKNOWN_ID), text)
    return [
        shlex.split(line, comments=True)[1:]
        for line in text.splitlines()
        if line.startswith(".venv/bin/greenchannel ")
    ]


def readme_example(*command: str, ids: Mapping[str, str] | None = None) -> list[str]:
    """The one example of ``command`` (e.g. ``"return", "order"``)."""
    [argv] = [argv for argv in readme_examples(ids) if tuple(argv[: len(command)]) == command]
    return argv
