"""Users with one role each, projects that group patients, and who belongs where."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class BaseModel(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Role(models.TextChoices):
    ADMIN = "admin", "Administrator"
    COORDINATOR = "coordinator", "Study coordinator"
    RADIOLOGIST = "radiologist", "Radiologist"
    CLINICIAN = "clinician", "Clinician"


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CLINICIAN)

    @property
    def is_site_admin(self) -> bool:
        return self.is_superuser or self.role == Role.ADMIN

    def save(self, *args: object, **kwargs: object) -> None:
        # Site admins use the admin pages; nobody else needs them.
        if self.role == Role.ADMIN:
            self.is_staff = True
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Project(BaseModel):
    """A group of patients (a cohort, a trial, a reading programme) and the people who may see it."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    members = models.ManyToManyField(  # type: ignore[var-annotated]
        User, through="Membership", related_name="projects"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(BaseModel):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "project"], name="unique_membership"),
        ]
