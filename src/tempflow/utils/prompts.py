"""Reading prompt files: one prompt per line; blank lines and lines starting with # are skipped.

A line ``category<TAB>prompt`` (the format of the shipped prompt lists) gives its prompt.
"""

from __future__ import annotations

from pathlib import Path

from tempflow.errors import UserError


def read_prompt_file(path: str | Path) -> list[str]:
    """Return the prompts of a text file; a missing, unreadable or empty file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} not found (give a text file with one prompt per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {str(path)!r} is not UTF-8 text (save it as UTF-8, one prompt per line)") from None
    except OSError as e:
        raise UserError(f"prompt file {str(path)!r} cannot be read ({e.strerror}); check its permissions") from None
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompts.append(line.split("\t")[-1].strip())
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} holds no prompts (write one prompt per line)")
    return prompts
