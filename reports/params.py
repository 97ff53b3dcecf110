"""The filters every report shares, read from a query string (API and pages alike)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.http import QueryDict
from rest_framework import serializers

from annotation.models import Structure
from core.exceptions import ApplicationError
from reports.services import dashboards

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User


class QuerySerializer(serializers.Serializer):
    reading_study = serializers.UUIDField(required=False, allow_null=True)
    structure = serializers.ChoiceField(choices=Structure.choices, default=Structure.ILD.value)
    mode = serializers.ChoiceField(choices=["auto", "engine", "readers"], default="auto")
    n_resamples = serializers.IntegerField(min_value=100, max_value=20000, default=2000)


def flag(params: QueryDict, name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ApplicationError(f"{name} must be 1 or 0, not {value!r}")


def values(params: QueryDict, name: str) -> tuple[str, ...]:
    """Repeated or comma-separated values, in order, without duplicates."""
    items: list[str] = []
    for value in params.getlist(name):
        items += [v.strip() for v in value.split(",") if v.strip()]
    return tuple(dict.fromkeys(items))


def uuid_or_404(value: str | None, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ApplicationError(f"{what} not found", status_code=404) from None


def parse_query(
    user: User | AnonymousUser, params: QueryDict, **overrides: Any
) -> dashboards.Query:
    """The shared filters of every report."""
    cleaned = {k: v for k, v in params.items() if v != ""}
    payload = QuerySerializer(data=cleaned)
    payload.is_valid(raise_exception=True)
    data: dict[str, Any] = dict(payload.validated_data)  # type: ignore[arg-type]
    study = None
    if data.get("reading_study") and "reading_study" not in overrides:
        study = dashboards.study_for(user, data["reading_study"])
    comparisons = []
    for item in values(params, "compare"):
        first, sep, second = item.partition(":")
        if not sep or not first or not second:
            raise ApplicationError(f"compare takes cohort:cohort, not {item!r}")
        comparisons.append((first, second))
    engines = values(params, "engine")
    options: dict[str, Any] = {
        "reading_study": study,
        "cohorts": values(params, "cohort"),
        "sources": values(params, "source") or engines,
        "mode": data["mode"],
        "comparisons": tuple(comparisons),
        "test_cohorts_p": values(params, "p_cohort"),
        "structure": data["structure"],
        "engines": engines or None,
        "include_open": flag(params, "include_open", False),
        "ci": flag(params, "ci", True),
        "n_resamples": data["n_resamples"],
    }
    if train := values(params, "train"):
        options["train_cohorts"] = train
    if test := values(params, "test"):
        options["test_cohorts"] = test
    options.update(overrides)
    return dashboards.Query(**options)
