"""DICOM elements as read: when the bytes a RawDataElement holds are exactly what pydicom would
write after converting it, the element can be kept, written and described (DICOM JSON) without
the conversion, which is most of the cost of de-identifying and indexing a file.

Used by de-identification (``studies.deidentify``), the file encoder (``studies.services.ingest``)
and the DICOM JSON builder (``studies.dicomweb.dicomjson``).
"""

from __future__ import annotations

import functools
import re
from typing import Final

from pydicom.charset import python_encoding
from pydicom.datadict import get_entry
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: The length field of an element or item of undefined length.
UNDEFINED_LENGTH: Final = 0xFFFFFFFF


@functools.lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    """The public dictionary's VR of ``tag`` ("" when unknown; memoised per tag)."""
    try:
        return str(get_entry(tag)[0])
    except KeyError:
        return ""


_PLAIN_ENCODINGS: Final = frozenset(
    python_encoding[name]
    for name in (
        *("", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110"),
        *("ISO_IR 144", "ISO_IR 127", "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 192"),
    )
)
# Printable ASCII, no leading or trailing space and no space next to a value delimiter.
_CANONICAL_TEXT_RE: Final = re.compile(rb"(?:[\x21-\x5b\x5d-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")
CANONICAL_UI_RE: Final = re.compile(rb"[0-9.]+(?:\\[0-9.]+)*")
_TEXT_KEPT_VRS: Final = frozenset({"AE", "AS", "CS", "DS", "IS", "TM"})
_CHARSET_TEXT_KEPT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
_BINARY_KEPT_SIZES: Final = {
    "US": 2,
    "SS": 2,
    "US or SS": 2,
    "UL": 4,
    "SL": 4,
    "AT": 4,
    "FD": 8,
    "SV": 8,
    "UV": 8,
    "OB": 2,
    "OW": 2,
    "OB or OW": 2,
    "OD": 2,
    "OF": 2,
    "OL": 2,
}


def plain_charset(ds: Dataset) -> bool:
    """Whether printable ASCII reads and writes as itself in ``ds``'s character set."""
    try:
        encodings = ds._character_set
    except Exception:
        return False
    if isinstance(encodings, str):
        encodings = [encodings]
    return len(encodings) == 1 and encodings[0] in _PLAIN_ENCODINGS


def raw_is_canonical(raw: RawDataElement, vr: str, plain_text: bool) -> bool:
    """True when ``raw``'s value bytes are exactly what pydicom writes after converting it.

    ``vr``: its VR (from the dictionary for Implicit VR); ``plain_text``: ``plain_charset``
    of its dataset. False when unsure.
    """
    value = raw.value
    if not isinstance(value, bytes) or raw.length == UNDEFINED_LENGTH or len(value) % 2:
        return False
    size = _BINARY_KEPT_SIZES.get(vr)
    if size is not None:
        return len(value) % size == 0
    if vr in _TEXT_KEPT_VRS or (plain_text and vr in _CHARSET_TEXT_KEPT_VRS):
        return _canonical_text(value)
    if vr == "UI":
        if value.endswith(b"\x00"):
            content = value[:-1]
            if len(content) % 2 == 0:
                return False  # padded although already even: pydicom would drop the pad
        else:
            content = value
        return CANONICAL_UI_RE.fullmatch(content) is not None
    return False


def _canonical_text(value: bytes) -> bool:
    if not value:
        return True
    content = value[:-1] if value[-1] == 0x20 else value
    if len(content) % 2 == 0 and content is not value:
        return False  # padded although already even: pydicom would drop the pad
    if b"\\" in content and (b" \\" in content or b"\\ " in content):
        return False
    if b"\\\\" in content or content.startswith(b"\\") or content.endswith(b"\\"):
        return False  # empty values
    return _CANONICAL_TEXT_RE.fullmatch(content) is not None
