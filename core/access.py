"""Who may see what: every selector narrows its queryset through these functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from core.models import Project, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User


def is_site_admin(user: User | AnonymousUser) -> bool:
    return bool(
        user.is_authenticated and (user.is_superuser or getattr(user, "role", None) == Role.ADMIN)
    )


def projects_for(user: User | AnonymousUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if is_site_admin(user):
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def has_role(user: User | AnonymousUser, *roles: str) -> bool:
    return bool(
        user.is_authenticated and (is_site_admin(user) or getattr(user, "role", None) in roles)
    )
