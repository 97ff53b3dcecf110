"""The one place where DICOMweb finds instances, series and studies for a user.

Every endpoint under ``/dicomweb/`` (search, retrieve, metadata, frames, rendered, bulk data)
reaches the store through ``visible_instances``. Series and studies are visible when they hold
a visible instance, so a filter added there (reader blinding: hide other readers' or models'
SEG objects from a reader) hides them everywhere, counts included.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Literal

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from rest_framework import status

from core.access import is_site_admin, projects_for
from core.exceptions import ApplicationError
from studies.models import Instance, Series, Study
from studies.selectors import instances_for

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import Project, User


@dataclass(frozen=True)
class Scope:
    """Who asks, within which project (None: all of the user's projects), and the absolute
    DICOMweb root URL that RetrieveURL and BulkDataURI values are built on."""

    user: User | AnonymousUser
    project_slug: str | None
    base_url: str


def visible_instances(scope: Scope) -> QuerySet[Instance]:
    """Instances the user may see through DICOMweb. Add blinding filters here, nowhere else."""
    queryset = instances_for(scope.user)
    if scope.project_slug is not None:
        queryset = queryset.filter(series__study__patient__project__slug=scope.project_slug)
    return queryset


def visible_series(scope: Scope) -> QuerySet[Series]:
    return Series.objects.filter(Exists(visible_instances(scope).filter(series_id=OuterRef("pk"))))


def visible_studies(scope: Scope) -> QuerySet[Study]:
    return Study.objects.filter(
        Exists(visible_instances(scope).filter(series__study_id=OuterRef("pk")))
    )


def require_project(scope: Scope) -> None:
    """A project-scoped URL for a project the user is not in is as unknown as a bad UID."""
    if scope.project_slug is None:
        return
    if not projects_for(scope.user).filter(slug=scope.project_slug).exists():
        raise ApplicationError(
            f"unknown project {scope.project_slug!r}", status_code=status.HTTP_404_NOT_FOUND
        )


def project_for_store(scope: Scope) -> Project:
    """The project a STOW request stores into: the scoped one, or the user's only project."""
    projects = projects_for(scope.user)
    if scope.project_slug is not None:
        project = projects.filter(slug=scope.project_slug).first()
        if project is None:
            raise ApplicationError(
                f"unknown project {scope.project_slug!r}", status_code=status.HTTP_404_NOT_FOUND
            )
        return project
    first = list(projects.order_by("slug")[:10])  # one query: the project, or the choice
    if len(first) == 1:
        return first[0]
    slugs = [p.slug for p in first]
    named = ", ".join(f"/dicomweb/projects/{slug}/studies" for slug in slugs) or "none"
    raise ApplicationError(
        "STOW-RS needs a target project: you belong to "
        + ("no project" if not slugs else "several projects")
        + f"; POST to the project's URL instead ({named})",
        extra={"project_urls": [f"/dicomweb/projects/{slug}/studies" for slug in slugs]},
    )


def instance_in(scope: Scope, study_uid: str, series_uid: str, sop_uid: str) -> QuerySet[Instance]:
    """The instance at a WADO path (zero or one row)."""
    return visible_instances(scope).filter(
        sop_instance_uid=sop_uid,
        series__series_instance_uid=series_uid,
        series__study__study_instance_uid=study_uid,
    )


def instances_under(
    scope: Scope, study_uid: str, series_uid: str | None = None
) -> QuerySet[Instance]:
    """Visible instances of a study (or one of its series), in reading order."""
    queryset = visible_instances(scope).filter(series__study__study_instance_uid=study_uid)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    return queryset.order_by("series__series_number", "series_id", "instance_number", "pk")


# ---- SQL compiled once a minute ------------------------------------------------------------

SlotKind = Literal["str", "int", "date", "iexact"]


class Slots:
    """A query's conditions with a sentinel in place of each of the request's values.

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


_SQL_TTL_S = 60.0
_sql_cache: OrderedDict[tuple[Any, ...], tuple[float, str, list[Any], list[int]]] = OrderedDict()
_sql_lock = threading.Lock()


def instance_row(
    scope: Scope, study_uid: str, series_uid: str, sop_uid: str, fields: tuple[str, ...]
) -> tuple[Any, ...] | None:
    """``instance_in(...).values_list(*fields)``, first row, with the SQL compiled once.

    A viewer asks for hundreds of frames a second and compiling this many-join query costs
    more than running it. The SQL is exactly what ``instance_in`` (so ``visible_instances``,
    with any blinding filter) compiles for this user, role and project (``compiled``).
    """
    slots = Slots()
    uids = (slots(study_uid), slots(series_uid), slots(sop_uid))
    sql, params = compiled(
        scope,
        ("instance_row", fields),
        lambda: instance_in(scope, *uids).order_by().values_list(*fields)[:1],
        slots,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


def compiled(
    scope: Scope,
    key: tuple[Any, ...],
    build: Callable[[], QuerySet[Any]],
    slots: Slots | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of ``build()`` for this user, role and project, compiled once a
    minute (memberships are read by the SQL itself, so they apply at once).

    ``build`` makes the queryset with the sentinels of ``slots`` where the request's values go;
    the values are swapped into the cached parameters. Rows come back as the database driver
    gives them (no ORM conversion), so callers read only plain columns.
    """
    # Everything the compiled SQL depends on besides the parameters: who (an admin sees every
    # project; a role may add blinding filters), which project, which query, which database.
    user = scope.user
    who = (getattr(user, "pk", None), is_site_admin(user), getattr(user, "role", None))
    cache_key = (who, scope.project_slug, key, connection.vendor)
    now = time.monotonic()
    with _sql_lock:
        cached = _sql_cache.get(cache_key)
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
        cached = (now + _SQL_TTL_S, sql, list(params), positions)
        with _sql_lock:
            _sql_cache[cache_key] = cached
            while len(_sql_cache) > 512:
                _sql_cache.popitem(last=False)
    _, sql, template, positions = cached
    bound = list(template)
    for position, value in zip(positions, slots.values if slots is not None else (), strict=True):
        bound[position] = value
    return sql, bound


def cached_rows(
    scope: Scope,
    key: tuple[Any, ...],
    build: Callable[[], QuerySet[Any]],
    slots: Slots | None = None,
) -> list[tuple[Any, ...]]:
    """All rows of ``build()`` (a ``values_list`` queryset), its SQL compiled once a minute
    (:func:`compiled`)."""
    sql, params = compiled(scope, key, build, slots)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]
