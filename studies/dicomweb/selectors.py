"""The one place where DICOMweb finds instances, series and studies for a user.

Every endpoint under ``/dicomweb/`` (search, retrieve, metadata, frames, rendered, bulk data)
reaches the store through ``visible_instances``. Series and studies are visible when they hold
a visible instance, so a filter added there (reader blinding: hide other readers' or models'
SEG objects from a reader) hides them everywhere, counts included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from rest_framework import status

from core import sql as core_sql
from core.access import is_site_admin, projects_for
from core.exceptions import ApplicationError
from core.sql import Slots
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


# ---- SQL compiled once a minute (``core.sql``), per user, role and project ----------------


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
    minute (``core.sql.compiled``; memberships are read by the SQL itself, so they apply at
    once)."""
    return core_sql.compiled(_scoped(scope, key), build, slots)


def cached_rows(
    scope: Scope,
    key: tuple[Any, ...],
    build: Callable[[], QuerySet[Any]],
    slots: Slots | None = None,
) -> list[tuple[Any, ...]]:
    """All rows of ``build()`` (a ``values_list`` queryset), its SQL compiled once a minute
    for this user, role and project (:func:`compiled`)."""
    return core_sql.rows(_scoped(scope, key), build, slots)


def _scoped(scope: Scope, key: tuple[Any, ...]) -> tuple[Any, ...]:
    """``key`` with everything the compiled SQL depends on besides its values: who (an admin
    sees every project; a role may add blinding filters) and which project."""
    user = scope.user
    who = (getattr(user, "pk", None), is_site_admin(user), getattr(user, "role", None))
    return ("dicomweb", who, scope.project_slug, key)
