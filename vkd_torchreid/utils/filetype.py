"""What a file is, from its first bytes: enough to tell a user who passed the wrong file what
they passed (a text file, a YAML file, a JPEG, an archive...) instead of a parser's error.

:func:`sniff` reads at most :data:`SNIFF_BYTES` bytes and never raises on content.
"""
from __future__ import annotations

import dataclasses
import os
import re

#: How many leading bytes :func:`sniff` reads.
SNIFF_BYTES = 4096

#: Leading bytes -> what a file that starts with them is.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras / MATLAB v7.3)"),
    (b"MATLAB", "a MATLAB .mat file"),
    (b"%PDF", "a PDF document"),
)
_YAML_KEY = re.compile(r"^[A-Za-z_][\w.-]*\s*:(\s|$)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class FileKind:
    """What :func:`sniff` found.

    Attributes:
        kind: ``'empty'``, ``'zip'`` (a zip archive: torch.save's format since PyTorch 1.6),
            ``'pickle'`` (a pickle stream of protocol 2+: torch.save's legacy format),
            ``'text'`` or ``'other'``.
        what: the file in words, for messages (``'a JPEG image'``, ``'a text file (YAML)'``).
        size: the file's size in bytes.
    """

    kind: str
    what: str
    size: int


def _text_kind(head: bytes) -> str:
    """'' when ``head`` is not text, else the text file in words."""
    if b"\x00" in head:
        return ""
    for cut in range(4):  # a UTF-8 character may be split at the end of what was read
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return ""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return "a text file (JSON)"
    if _YAML_KEY.search(text):
        return "a text file (YAML)"
    return "a text file"


def sniff(path: str) -> FileKind:
    """What the file at ``path`` is, from its first bytes.

    Raises:
        OSError: the file cannot be opened or read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head:
        return FileKind("empty", "an empty file (0 bytes)", size)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return FileKind("zip", "a zip archive", size)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return FileKind("pickle", f"a pickle (protocol {head[1]})", size)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return FileKind("other", what, size)
    if len(head) > 262 and head[257:262] == b"ustar":
        return FileKind("other", "a tar archive", size)
    if len(head) > 10 and head[6:8] == b"\x00\x00" and head[8:10] == b'{"':
        return FileKind("other", "a safetensors file", size)
    text = _text_kind(head)
    if text:
        return FileKind("text", text, size)
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return FileKind("other", f"a binary file of unknown format (it starts with {shown})", size)


__all__ = ["SNIFF_BYTES", "FileKind", "sniff"]
