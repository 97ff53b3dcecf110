"""multipart/related bodies read as they arrive (STOW-RS uploads)."""

from __future__ import annotations

import io
import os

import pytest

from studies.dicomweb.multipart import MultipartError, read_parts

BOUNDARY = "f00dcafe"


def split_parts(body: bytes, boundary: str) -> list:
    return list(read_parts(io.BytesIO(body).read, boundary))


def body_of(contents: list[bytes], *, headers: bool = True) -> bytes:
    head = b"Content-Type: application/dicom\r\n" if headers else b""
    parts = b"".join(
        f"--{BOUNDARY}\r\n".encode() + head + b"\r\n" + content + b"\r\n" for content in contents
    )
    return b"preamble\r\n" + parts + f"--{BOUNDARY}--\r\nepilogue".encode()


CONTENTS = [os.urandom(n) for n in (0, 1, 37, 4096, 70_001)] + [b"\r\n--f00dcaf\r\n\r\n"]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 4096, 1 << 20])
def test_parts_are_the_same_whatever_the_chunks(chunk_size):
    """A delimiter, a header block or CRLF CRLF split across chunks is still found, once."""
    body = body_of(CONTENTS)
    parts = list(read_parts(io.BytesIO(body).read, BOUNDARY, chunk_size=chunk_size))
    assert [p.content for p in parts] == CONTENTS
    assert all(p.content_type == "application/dicom" for p in parts)
    assert [p.content for p in split_parts(body, BOUNDARY)] == CONTENTS


def test_a_part_without_headers_keeps_content_that_looks_like_headers():
    content = b"Not-A-Header: x\r\n\r\nbinary"
    parts = split_parts(body_of([content], headers=False), BOUNDARY)
    assert [(p.headers, p.content) for p in parts] == [({}, content)]


def test_each_part_is_yielded_before_the_rest_of_the_body_is_read():
    body = body_of([bytes(100_000)] * 5)
    stream = io.BytesIO(body)
    parts = read_parts(stream.read, BOUNDARY, chunk_size=16_384)
    first = next(parts)
    assert len(first.content) == 100_000
    assert stream.tell() < 2 * 100_000  # the first part and at most a chunk more
    assert len(list(parts)) == 4


def test_a_body_without_the_boundary_is_refused():
    with pytest.raises(MultipartError, match="does not occur"):
        split_parts(b"no boundary in here", BOUNDARY)


@pytest.mark.parametrize(
    ("rest", "reason"),
    [
        (b"\r\n--f00dcafe\r\n\r\nsecond, never closed", "no closing boundary"),
        (b"\r\n--f00dcafe\r\nContent-Type: application/dicom", "truncated part headers"),
        (b"\r\n--f00dcafe", "truncated multipart body"),
    ],
)
def test_a_flaw_is_raised_after_the_parts_before_it(rest, reason):
    first = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nfirst".encode()
    parts = read_parts(io.BytesIO(first + rest).read, BOUNDARY, chunk_size=5)
    assert next(parts).content == b"first"
    with pytest.raises(MultipartError, match=reason):
        list(parts)
