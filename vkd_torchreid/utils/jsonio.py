"""JSON files written atomically (a reader sees the old file or the new one, never half), and
JSON and YAML files read with one-line errors that name the file and keep the parser's whole
sentence, with its line and column."""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import yaml


class FileFormatError(ValueError):
    """A file that cannot be read as what it should be; the message (one line) names it."""


def write_json(obj: Any, path: str) -> None:
    """Writes ``obj`` as indented JSON at ``path`` (temporary file, fsync, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def parse_error_message(exc: BaseException) -> str:
    """One line with the whole of a JSON or YAML parser's message.

    PyYAML writes its errors over several lines (what it was doing and where, then the
    problem and where, each with a quoted snippet of the file); this keeps both sentences and
    both positions (1-based, as PyYAML prints them) and drops the snippets. A JSON error is one
    line already (``Expecting ',' delimiter: line 3 column 5 (char 20)``).
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = []
        same = (exc.context_mark is not None and exc.problem_mark is not None
                and (exc.context_mark.line, exc.context_mark.column)
                == (exc.problem_mark.line, exc.problem_mark.column))
        if exc.context:
            parts.append(exc.context + (f" ({_at(exc.context_mark)})"
                                        if exc.context_mark is not None and not same else ""))
        if exc.problem:
            parts.append(exc.problem + (f" ({_at(exc.problem_mark)})"
                                        if exc.problem_mark is not None else ""))
        elif same:
            parts[-1] += f" ({_at(exc.context_mark)})"
        if exc.note:
            parts.append(exc.note)
        if parts:
            return ": ".join(p.strip() for p in parts)
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _read(path: str, kind: str, parse: Callable[[str], Any]) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{path}: not a {kind} file: {parse_error_message(exc)}") from None
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not text.strip() and kind == "JSON":
        raise FileFormatError(f"{path}: an empty file, expected {kind}")
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise FileFormatError(f"{path}: not valid {kind}: {parse_error_message(exc)}") from None


def read_json(path: str) -> Any:
    """The content of a JSON file.

    Raises:
        FileNotFoundError: no such file (named).
        FileFormatError: unreadable, empty, not UTF-8 or not JSON: one line naming ``path``
            with the parser's message (line and column).
    """
    return _read(path, "JSON", json.loads)


def read_yaml(path: str) -> Any:
    """The content of a YAML file (``yaml.safe_load``: None for an empty one).

    Raises:
        FileNotFoundError: no such file (named).
        FileFormatError: unreadable, not UTF-8 or not YAML: one line naming ``path``
            with the parser's whole message (both of its sentences, with line and column).
    """
    return _read(path, "YAML", yaml.safe_load)
