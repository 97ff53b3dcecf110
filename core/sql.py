"""ORM queries compiled to SQL once a minute and run again with other values.

For a query on a hot path (a viewer's frames and searches, each file an upload stores),
compiling the queryset costs more than running it. ``compiled`` compiles ``build()`` once per
key and minute, with a sentinel (``Slots``) wherever a value goes, and swaps the values into
the cached parameters; the rows come back as the database driver gives them (no ORM
conversion), so callers read only plain columns.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, Literal

from django.db import connection
from django.db.models import QuerySet

SlotKind = Literal["str", "int", "date", "iexact"]


class Slots:
    """A query's conditions with a sentinel in place of each value.

    A query is then compiled once a minute per shape (for a search: which keys, which kind of
    match, how many values), not per value: the sentinels are found in the compiled parameters and the
    values go in their place (:func:`compiled`). Each value is prepared here as the ORM
    would prepare it for its lookup, so the conditions use only lookups that pass a value
    through unchanged, or through Django's own ``adapt_datefield_value`` and
    ``prep_for_iexact_query``.
    """

    def __init__(self) -> None:
        self.sentinels: list[Any] = []  # as the compiled parameters hold them
        self.values: list[Any] = []  # as the database takes them

    def __call__(self, value: Any, kind: SlotKind = "str") -> Any:
        n = len(self.sentinels) + 1
        ops = connection.ops
        sentinel: Any
        if kind == "int":
            sentinel = -(2**31) + n  # far from any page size, offset or key
            self.sentinels.append(sentinel)
            self.values.append(value)
        elif kind == "date":
            sentinel = date.min + timedelta(days=n)
            self.sentinels.append(ops.adapt_datefield_value(sentinel))
            self.values.append(ops.adapt_datefield_value(value))
        else:
            sentinel = f"\x00{n}\x00"
            prepare = ops.prep_for_iexact_query if kind == "iexact" else str
            self.sentinels.append(prepare(sentinel))
            self.values.append(prepare(value))
        return sentinel


TTL_S = 60.0
_cache: OrderedDict[tuple[Any, ...], tuple[float, str, list[Any], list[int]]] = OrderedDict()
_lock = threading.Lock()


def compiled(
    key: tuple[Any, ...],
    build: Callable[[], QuerySet[Any]],
    slots: Slots | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of ``build()``, compiled once a minute per ``key`` and database.
    ``key`` starts with the caller's name (``"dicomweb"``, ``"ingest"``) and holds everything
    the SQL depends on besides the values: the query and its shape, and whatever decides what
    it filters.

    ``build`` makes the queryset with the sentinels of ``slots`` where the values go; the
    values are swapped into the cached parameters.
    """
    cache_key = (*key, connection.vendor)
    now = time.monotonic()
    with _lock:
        cached = _cache.get(cache_key)
        if cached is not None and cached[0] < now:
            cached = None
    if cached is None:
        sql, params = build().query.sql_with_params()
        positions = []
        for sentinel in slots.sentinels if slots is not None else ():
            found = [n for n, param in enumerate(params) if param == sentinel]
            if len(found) != 1:
                raise ValueError(f"{key}: {sentinel!r} is {len(found)} of the compiled parameters")
            positions += found
        cached = (now + TTL_S, sql, list(params), positions)
        with _lock:
            _cache[cache_key] = cached
            while len(_cache) > 512:
                _cache.popitem(last=False)
    _, sql, template, positions = cached
    bound = list(template)
    for position, value in zip(positions, slots.values if slots is not None else (), strict=True):
        bound[position] = value
    return sql, bound


def rows(
    key: tuple[Any, ...], build: Callable[[], QuerySet[Any]], slots: Slots | None = None
) -> list[tuple[Any, ...]]:
    """All rows of ``build()`` (a ``values_list`` queryset), its SQL compiled once a minute."""
    sql, params = compiled(key, build, slots)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]
