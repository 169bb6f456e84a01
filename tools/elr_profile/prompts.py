"""Prompts for profiling: read from a prompt file, or cut from a real text file.

A prompt file is UTF-8 text (other bytes pass through unchanged). When it contains a blank
line, prompts are the blocks between blank lines, with the line breaks inside a block kept.
Otherwise every non-empty line is a prompt.

Without a prompt file, prompts are cut from a text file at line starts spread evenly through
it, each `prompt_bytes` long (shortened to end on a whole UTF-8 character). The default text
is tinyshakespeare.txt from the data directory beside a checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_PROMPT_BYTES = 64
_BLANK_LINES = re.compile(rb"\n(?:[ \t]*\n)+")  # one or more blank lines


class PromptError(ValueError):
    """A prompt file or text file cannot be used. The message is one line."""


def default_text_path() -> Path | None:
    """Return ../shared/data/text/tinyshakespeare.txt beside this checkout, if it exists."""
    repo = Path(__file__).resolve().parents[2]
    path = repo.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
    return path if path.is_file() else None


def _read_bytes(path: Path, kind: str) -> bytes:
    """Return the contents of the prompt or text file at `path`; `kind` names it in errors."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{kind} not found: {path}") from None
    except IsADirectoryError:
        raise PromptError(f"{kind} {path} is a directory, not a file") from None
    except OSError as error:
        raise PromptError(f"cannot read {kind} {path} ({error.strerror or error})") from None


def split_prompts(data: bytes) -> list[bytes]:
    """Split prompt-file contents into prompts by the rule in the module docstring."""
    data = data.replace(b"\r\n", b"\n")
    blocks = _BLANK_LINES.split(data) if _BLANK_LINES.search(data) else data.split(b"\n")
    return [block.strip(b"\n") for block in blocks if block.strip()]


def read_prompt_file(path: Path) -> list[bytes]:
    """Return the prompts in a prompt file, or raise PromptError when it has none."""
    prompts = split_prompts(_read_bytes(path, "prompt file"))
    if not prompts:
        raise PromptError(f"prompt file {path} contains no prompts: write one prompt per line, "
                          "or separate prompts by blank lines")
    return prompts


def _whole_characters(data: bytes) -> bytes:
    """Drop an unfinished UTF-8 character from the end of `data`."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data  # ASCII: the character before it is complete too
        if byte >= 0xC0:
            # a lead byte: 110xxxxx starts 2 bytes, 1110xxxx 3 and 11110xxx 4
            if byte < 0xE0:
                length = 2
            elif byte < 0xF0:
                length = 3
            else:
                length = 4
            return data if back >= length else data[:-back]
    return data


def prompts_from_text(path: Path, count: int, prompt_bytes: int) -> list[bytes]:
    """Cut `count` prompts of `prompt_bytes` bytes from the text at `path`."""
    if prompt_bytes < 1:
        raise PromptError(f"prompt length {prompt_bytes} must be at least 1 byte")
    if count < 1:
        raise PromptError(f"prompt count {count} must be at least 1")
    text = _read_bytes(path, "text file")
    if len(text) < prompt_bytes:
        raise PromptError(f"text file {path} has {len(text)} bytes, fewer than the "
                          f"{prompt_bytes}-byte prompts requested: choose a shorter "
                          "--prompt-bytes or a longer --text")

    starts = [0] + [match.end() for match in re.finditer(rb"\n", text)]
    usable = [start for start in starts if start + prompt_bytes <= len(text)]
    picks = [usable[round(i * (len(usable) - 1) / max(count - 1, 1))] for i in range(count)]
    prompts = [_whole_characters(text[start:start + prompt_bytes]) for start in picks]
    return [prompt or text[:prompt_bytes] for prompt in prompts]
