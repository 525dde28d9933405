"""Reading prompt files: one prompt per line; blank lines and lines starting with # are skipped.

A line ``category<TAB>prompt`` (the format of the shipped prompt lists) gives its prompt.

Metadata files (``.jsonl``, as GenEval's ``prompts/evaluation_metadata.jsonl``): one JSON
object per line with a "prompt" string and any other fields (GenEval's "tag", "include",
"exclude"); :func:`read_metadata_file` returns the objects.
"""

from __future__ import annotations

import json
from pathlib import Path

from tempflow.errors import UserError


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} not found (give {what})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {str(path)!r} is not UTF-8 text (save it as UTF-8, {what})") from None
    except OSError as e:
        raise UserError(f"prompt file {str(path)!r} cannot be read ({e.strerror}); check its permissions") from None


def read_prompt_file(path: str | Path) -> list[str]:
    """Return the prompts of a text file; a missing, unreadable or empty file is a UserError."""
    path = Path(path)
    text = _read_text(path, "a text file with one prompt per line")
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompts.append(line.split("\t")[-1].strip())
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} holds no prompts (write one prompt per line)")
    return prompts


def read_metadata_file(path: str | Path) -> list[dict]:
    """The objects of a JSONL prompt file, one per non-blank line, each with a non-empty
    "prompt" string and, if present, a "tag" string. UserError naming the file and line."""
    path = Path(path)
    how = "one JSON object per line with a \"prompt\" string, as GenEval's evaluation_metadata.jsonl"
    text = _read_text(path, how)
    rows = []
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        where = f"prompt file {str(path)!r} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not JSON ({e.msg} at column {e.colno}); write {how}") from None
        if not isinstance(row, dict):
            raise UserError(f"{where} is a JSON {type(row).__name__}, not an object; write {how}")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where} has no \"prompt\" string; give each object a non-empty \"prompt\"")
        if "tag" in row and (not isinstance(row["tag"], str) or not row["tag"].strip()):
            raise UserError(f"{where}: \"tag\" must be a non-empty string (the prompt's category, e.g. "
                            f"\"counting\")")
        rows.append(row)
    if not rows:
        raise UserError(f"prompt file {str(path)!r} holds no prompts (write {how})")
    return rows
