"""Media types for DICOMweb: Accept parsing and multipart/related bodies (RFC 2387, PS3.18 8.7).

Clients disagree on quoting (OHIF sends ``type=application/octet-stream; transfer-syntax=*``
unquoted, Orthanc answers ``type="application/octet-stream; transfer-syntax=..."`` with the
transfer syntax inside the quotes), so parameters are read with quotes honoured and a ``type``
that carries its own parameters is unfolded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type=...; transfer-syntax=...``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def is_multipart(self) -> bool:
        return self.media_type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The media type of the parts (``type`` parameter), or the type itself if single-part."""
        if self.is_multipart:
            return self.params.get("type", "*/*").lower()
        return self.media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Does this range (of part types) accept ``media_type``?"""
        return type_matches(self.part_type, media_type)


def type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*", "*/*"):
        return True
    major, _, minor = pattern.partition("/")
    other_major, _, other_minor = media_type.partition("/")
    return major == other_major and minor in ("*", other_minor)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_params(items: Iterable[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.strip().partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = value.strip().strip('"').strip()
    return params


def parse_media_type(value: str) -> MediaRange:
    """``type/subtype; a=b; ...`` with a quoted ``type`` parameter's own parameters unfolded."""
    pieces = _split_outside_quotes(value, ";")
    media_type = pieces[0].strip().lower()
    params = parse_params(pieces[1:])
    q = 1.0
    if "q" in params:
        try:
            q = float(params.pop("q"))
        except ValueError:
            q = 0.0
    inner = params.get("type", "")
    if ";" in inner:
        inner_pieces = inner.split(";")
        params["type"] = inner_pieces[0].strip().lower()
        for name, inner_value in parse_params(inner_pieces[1:]).items():
            params.setdefault(name, inner_value)
    elif "type" in params:
        params["type"] = params["type"].lower()
    return MediaRange(media_type, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept entries by preference (q, then order); an absent header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(p) for p in _split_outside_quotes(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_header(content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """A part's header block. ``Content-Type:`` is spelled exactly so: Cornerstone's parser
    compares it case-sensitively and otherwise decodes compressed frames as raw pixels."""
    lines = [f"Content-Type: {content_type}"]
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def encode_parts(boundary: str, parts: Iterable[tuple[bytes, bytes]]) -> bytes:
    """One body from ``(header block, content)`` pairs."""
    return b"".join(iter_parts(boundary, parts))


def iter_parts(boundary: str, parts: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """The body in chunks, for streaming responses (a study can be gigabytes)."""
    marker = b"--" + boundary.encode()
    for header, content in parts:
        yield marker + CRLF + header
        yield content
        yield CRLF
    yield marker + b"--" + CRLF


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    extra = "".join(f"; {name.replace('_', '-')}={value}" for name, value in params.items())
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


class MultipartError(ValueError):
    """The body is not the multipart/related message its Content-Type announced."""


@dataclass
class Part:
    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


Read = Callable[[int], bytes]
READ_CHUNK = 1024 * 1024


def read_parts(read: Read, boundary: str, *, chunk_size: int = READ_CHUNK) -> Iterator[Part]:
    """Parts of a multipart body as they arrive: ``read(n)`` returns up to ``n`` more bytes of
    the body (b"" at its end). Each part is yielded once its closing delimiter has been read,
    so the first can be worked on while the rest are still on their way, and no more than one
    part (and a chunk) is held here at a time. MultipartError, when the body turns out not to
    be a multipart body, is raised on reaching the flaw, after the parts before it."""
    if not boundary:
        raise MultipartError("Content-Type has no boundary parameter")
    body = _Buffered(read, chunk_size)
    marker = b"--" + boundary.encode()
    delimiter = CRLF + marker
    start = body.find(marker, 0)
    if start < 0:
        raise MultipartError("the boundary from Content-Type does not occur in the body")
    position = start + len(marker)
    while True:
        if body.startswith(b"--", position):
            return
        # Skip transport padding and the CRLF after the delimiter.
        line_end = body.find(CRLF, position)
        if line_end < 0:
            raise MultipartError("truncated multipart body")
        position = line_end + 2
        if body.startswith(CRLF, position):  # a part with no headers at all
            header_end = position - 2
        else:
            header_end = body.find(CRLF + CRLF, position)
            if header_end < 0:
                raise MultipartError("truncated part headers")
        headers: dict[str, str] = {}
        for line in body.take(position, header_end).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        content_start = header_end + 4
        end = body.find(delimiter, content_start)
        if end < 0:
            raise MultipartError("a part has no closing boundary")
        content = body.take(content_start, end)
        body.forget(end + len(delimiter))
        position = 0
        yield Part(headers, content)


class _Buffered:
    """The unread rest of a body: what has arrived, read further on demand."""

    def __init__(self, read: Read, chunk_size: int) -> None:
        self.read = read
        self.chunk_size = chunk_size
        self.data = bytearray()
        self.ended = False

    def more(self) -> bool:
        """Read one more chunk; False at the body's end."""
        if self.ended:
            return False
        chunk = self.read(self.chunk_size)
        if not chunk:
            self.ended = True
            return False
        self.data += chunk
        return True

    def find(self, pattern: bytes, start: int) -> int:
        """Where ``pattern`` first occurs at or after ``start``, reading as far as needed; -1
        if the body ends first. Each byte is searched once, however many chunks it takes."""
        searched = start
        while True:
            found = self.data.find(pattern, searched)
            if found >= 0:
                return found
            searched = max(start, len(self.data) - len(pattern) + 1)
            if not self.more():
                return -1

    def startswith(self, prefix: bytes, position: int) -> bool:
        while len(self.data) < position + len(prefix) and self.more():
            pass
        return self.data.startswith(prefix, position)

    def take(self, start: int, end: int) -> bytes:
        """A copy of ``[start, end)``, which must have arrived."""
        with memoryview(self.data) as view:
            return bytes(view[start:end])

    def forget(self, end: int) -> None:
        """Drop what comes before ``end``: positions count from ``end`` from now on."""
        del self.data[:end]
