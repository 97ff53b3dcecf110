"""QIDO-RS (PS3.18 10.6): search studies, series and instances.

Matching (PS3.4 C.2.2.2) on the attributes the store indexes: single values, UID lists,
wildcards ``*`` and ``?``, date and time ranges, and fuzzy person-name matching, which here
means "any name component contains the words". Attributes that exist in the DICOM dictionary
but that we do not index are ignored with a ``Warning`` header, as the standard allows; keys
that are not DICOM attributes at all are a 400.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, TextField, Value
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from core.exceptions import ApplicationError
from core.sql import SlotKind, Slots
from studies.dicomweb import selectors
from studies.dicomweb.dicomjson import attr, with_base
from studies.dicomweb.selectors import Scope
from studies.models import Instance, Series, Study

Level = Literal["study", "series", "instance"]
Kind = Literal["uid", "str", "pn", "date", "time", "int"]
LEVEL_ORDER: dict[str, int] = {"study": 0, "series": 1, "instance": 2}

# How a query at one level reaches the model of another level (ORM path prefix).
PREFIX: dict[str, dict[str, str]] = {
    "study": {"study": "", "series": "series__", "instance": "series__instances__"},
    "series": {"study": "study__", "series": "", "instance": "instances__"},
    "instance": {"study": "series__study__", "series": "series__", "instance": ""},
}
CONTROL_PARAMS = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Attribute:
    tag: int
    keyword: str
    vr: str
    level: Level
    kind: Kind
    path: str  # ORM path relative to the level's model


def _a(tag: int, vr: str, level: Level, kind: Kind, path: str) -> Attribute:
    return Attribute(tag, keyword_for_tag(tag), vr, level, kind, path)


MATCHABLE: dict[int, Attribute] = {
    a.tag: a
    for a in (
        _a(0x00080020, "DA", "study", "date", "study_date"),
        _a(0x00080030, "TM", "study", "time", "study_time"),
        _a(0x00080050, "SH", "study", "str", "accession_number"),
        _a(0x00080090, "PN", "study", "pn", "referring_physician_name"),
        _a(0x00081030, "LO", "study", "str", "description"),
        _a(0x00100010, "PN", "study", "pn", "patient__patient_name"),
        _a(0x00100020, "LO", "study", "str", "patient__patient_id"),
        _a(0x00100030, "DA", "study", "date", "patient__birth_date"),
        _a(0x00100040, "CS", "study", "str", "patient__sex"),
        _a(0x0020000D, "UI", "study", "uid", "study_instance_uid"),
        _a(0x00200010, "SH", "study", "str", "study_id"),
        # ModalitiesInStudy matches the modality of any series of the study.
        _a(0x00080061, "CS", "series", "str", "modality"),
        _a(0x00080060, "CS", "series", "str", "modality"),
        _a(0x0008103E, "LO", "series", "str", "description"),
        _a(0x0020000E, "UI", "series", "uid", "series_instance_uid"),
        _a(0x00200011, "IS", "series", "int", "series_number"),
        _a(0x00180015, "CS", "series", "str", "body_part_examined"),
        _a(0x00200052, "UI", "series", "uid", "frame_of_reference_uid"),
        _a(0x00080016, "UI", "instance", "uid", "sop_class_uid"),
        _a(0x00080018, "UI", "instance", "uid", "sop_instance_uid"),
        _a(0x00200013, "IS", "instance", "int", "instance_number"),
    )
}


@dataclass
class QidoQuery:
    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    include: set[int] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class QidoResult:
    items: list[dict[str, Any]]
    warnings: list[str]

    def to_json(self) -> bytes:
        return json.dumps(self.items, separators=(",", ":"), ensure_ascii=False).encode()


def _bad(message: str) -> ApplicationError:
    return ApplicationError(message, status_code=400)


def parse_tag(key: str) -> int | None:
    """``PatientID``, ``00100020`` or ``0010,0020``/``(0010,0020)`` → tag, else None."""
    text = key.strip().strip("()").replace(",", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = tag_for_keyword(key.strip())
    return int(tag) if tag is not None else None


def _parse_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise _bad(f"{name} must be at least {minimum}")
    return number


def parse_query(level: Level, params: Iterable[tuple[str, list[str]]]) -> QidoQuery:
    """The query string as a QidoQuery; raise ApplicationError(400) naming what is wrong."""
    query = QidoQuery(level=level)
    for key, values in params:
        name = key.lower()
        if name == "limit":
            query.limit = min(_parse_int("limit", values[-1], 0), MAX_LIMIT)
            continue
        if name == "offset":
            query.offset = _parse_int("offset", values[-1], 0)
            continue
        if name == "fuzzymatching":
            flag = values[-1].strip().lower()
            if flag not in ("true", "false", ""):
                raise _bad(f"fuzzymatching must be true or false, not {values[-1]!r}")
            query.fuzzy = flag == "true"
            continue
        if name == "includefield":
            for value in values:
                for item in value.split(","):
                    item = item.strip()
                    if not item:
                        continue
                    if item.lower() == "all":
                        query.include_all = True
                        continue
                    tag = parse_tag(item)
                    if tag is None:
                        raise _bad(f"includefield {item!r} is neither a DICOM keyword nor a tag")
                    query.include.add(tag)
            continue
        if key.startswith("_"):
            continue  # cache busters some HTTP libraries append
        tag = parse_tag(key)
        if tag is None:
            raise _bad(
                f"unknown query parameter {key!r}: use DICOM keywords or tags "
                "(PatientID, 00100020), limit, offset, includefield or fuzzymatching"
            )
        attribute = MATCHABLE.get(tag)
        value = values[-1]
        if attribute is None:
            query.warnings.append(f"{key} is not supported for matching and was ignored")
            continue
        if attribute.tag == 0x00080061 and level != "study":
            attribute = MATCHABLE[0x00080060]
        _validate(attribute, value)
        query.filters.append((attribute, value))
    return query


DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
TIME_RANGE = re.compile(r"^([\d.:]*)(-)?([\d.:]*)$")


def _validate(attribute: Attribute, value: str) -> None:
    if attribute.kind == "date" and value not in ("", "*"):
        match = DATE_RANGE.match(value.replace("-", "", 2) if _iso_date(value) else value)
        if not match or not (match.group(1) or match.group(3)):
            raise _bad(f"{attribute.keyword} {value!r} is not a date or range (YYYYMMDD-YYYYMMDD)")
        for part in (match.group(1), match.group(3)):
            if part:
                _to_date(attribute, part)
    if attribute.kind == "time" and value not in ("", "*") and not TIME_RANGE.match(value):
        raise _bad(f"{attribute.keyword} {value!r} is not a time or range (HHMMSS-HHMMSS)")
    if attribute.kind == "int" and value not in ("", "*"):
        for item in re.split(r"[,\\]", value):
            if not item.strip().lstrip("-").isdigit():
                raise _bad(f"{attribute.keyword} {value!r} is not an integer")
    if attribute.kind == "uid":
        for item in re.split(r"[,\\]", value):
            if item and not re.fullmatch(r"[0-9.*?]{1,64}", item.strip()):
                raise _bad(f"{attribute.keyword} {item!r} is not a UID")


def _iso_date(value: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value))


def _to_date(attribute: Attribute, text: str) -> date:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise _bad(f"{attribute.keyword} {text!r} is not a valid date") from None


def _wildcard_regex(value: str) -> str:
    return (
        "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"
    )


def _plain(value: Any, kind: SlotKind = "str") -> Any:
    """A condition's value as it is (the ORM prepares it)."""
    return value


def _condition(
    attribute: Attribute, path: str, value: str, fuzzy: bool, slot: Callable[..., Any] = _plain
) -> Q | None:
    """The Q object for one matching key, or None for universal matching; each value in it
    goes through ``slot``."""
    value = value.strip()
    if value in ("", "*"):
        return None
    kind = attribute.kind
    if kind == "date":
        text = value.replace("-", "") if _iso_date(value) else value
        match = DATE_RANGE.match(text)
        assert match is not None  # validated
        start, dash, end = match.groups()
        if not dash:
            return Q(**{path: slot(_to_date(attribute, start), "date")})
        condition = Q()
        if start:
            condition &= Q(**{f"{path}__gte": slot(_to_date(attribute, start), "date")})
        if end:
            condition &= Q(**{f"{path}__lte": slot(_to_date(attribute, end), "date")})
        return condition
    if kind == "time":
        start, dash, end = value.partition("-")
        if not dash:
            return Q(**{f"{path}__regex": slot("^" + re.escape(start.replace(":", "")))})
        condition = Q()
        if start:
            condition &= Q(**{f"{path}__gte": slot(start.replace(":", ""))})
        if end:
            condition &= Q(**{f"{path}__lte": slot(end.replace(":", "") + "~")})
        return condition
    items = [v.strip() for v in re.split(r"[,\\]" if kind != "pn" else r"\\", value) if v.strip()]
    condition = Q()
    for item in items:
        if kind == "int":
            condition |= Q(**{path: slot(int(item), "int")})
        elif "*" in item or "?" in item:
            lookup = "regex" if kind == "uid" else "iregex"
            condition |= Q(**{f"{path}__{lookup}": slot(_wildcard_regex(item))})
        elif kind == "uid":
            condition |= Q(**{path: slot(item)})
        elif kind == "pn" and fuzzy:
            words = Q()
            for word in re.split(r"[\s^,]+", item):
                if word:
                    words &= Q(**{f"{path}__iregex": slot(re.escape(word))})
            condition |= words
        else:
            condition |= Q(**{f"{path}__iexact": slot(item, "iexact")})
    return condition


def _conditions(query: QidoQuery, slot: Callable[..., Any] = _plain) -> tuple[Q, Q]:
    """The query's matching as (conditions on the level's own rows, conditions through a
    reverse relation, matched in a subquery so that no row comes twice)."""
    direct, deep = Q(), Q()
    for attribute, value in query.filters:
        path = PREFIX[query.level][attribute.level] + attribute.path
        condition = _condition(attribute, path, value, query.fuzzy, slot)
        if condition is None:
            continue
        if LEVEL_ORDER[attribute.level] > LEVEL_ORDER[query.level]:
            deep &= condition
        else:
            direct &= condition
    return direct, deep


def _apply_filters(queryset: QuerySet[Any], model: Any, conditions: tuple[Q, Q]) -> QuerySet[Any]:
    direct, deep = conditions
    if direct:
        queryset = queryset.filter(direct)
    if deep:
        queryset = queryset.filter(pk__in=model.objects.filter(deep).values("pk"))
    return queryset


def _page(queryset: QuerySet[Any], query: QidoQuery) -> QuerySet[Any]:
    if query.limit is not None:
        return queryset[query.offset : query.offset + query.limit]
    return queryset[query.offset :] if query.offset else queryset


# ---- result attributes -------------------------------------------------------------------


def _da(value: date | str | None) -> str | None:
    if not value:
        return None
    if isinstance(value, str):  # a date column read without the ORM's converters (SQLite)
        return value.replace("-", "")[:8]
    return value.strftime("%Y%m%d")


# The order of the study list: by patient, then date (the key keeps pages stable).
STUDY_ORDER = ("patient__patient_id", "study_date", "study_instance_uid", "pk")

# What a study result holds, in the order _study_row_attributes reads it.
STUDY_COLUMNS = (
    "study_instance_uid",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "description",
    "referring_physician_name",
    "patient__patient_name",
    "patient__patient_id",
    "patient__birth_date",
    "patient__sex",
)


def _study_attributes(study: Study, scope: Scope) -> dict[str, Any]:
    patient = study.patient
    row = (
        study.study_instance_uid,
        study.study_date,
        study.study_time,
        study.accession_number,
        study.study_id,
        study.description,
        study.referring_physician_name,
        patient.patient_name,
        patient.patient_id,
        patient.birth_date,
        patient.sex,
    )
    return _study_row_attributes(row, scope.base_url)


def _study_row_attributes(row: tuple[Any, ...], base_url: str) -> dict[str, Any]:
    uid, study_date, study_time, accession, study_id, description, referring = row[:7]
    patient_name, patient_id, birth_date, sex = row[7:]
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080020": attr("DA", _da(study_date)),
        "00080030": attr("TM", study_time),
        "00080050": attr("SH", accession),
        "00080056": attr("CS", "ONLINE"),
        "00080090": attr("PN", referring),
        "00081030": attr("LO", description),
        "00081190": attr("UR", f"{base_url}/studies/{uid}"),
        "00100010": attr("PN", patient_name),
        "00100020": attr("LO", patient_id),
        "00100030": attr("DA", _da(birth_date)),
        "00100040": attr("CS", sex),
        "0020000D": attr("UI", uid),
        "00200010": attr("SH", study_id),
    }


def _uuid(value: Any) -> uuid.UUID:
    """A primary key as the ORM gives it, whatever form the driver returned it in."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _series_attributes(series: Series, scope: Scope) -> dict[str, Any]:
    return _series_row_attributes(
        (
            series.study.study_instance_uid,
            series.series_instance_uid,
            series.modality,
            series.description,
            series.series_number,
        ),
        scope.base_url,
    )


# What a series result holds besides its study's, in the order _series_row_attributes reads it.
SERIES_COLUMNS = (
    "study__study_instance_uid",
    "series_instance_uid",
    "modality",
    "description",
    "series_number",
)


def _series_row_attributes(row: tuple[Any, ...], base_url: str) -> dict[str, Any]:
    study_uid, series_uid, modality, description, number = row
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080056": attr("CS", "ONLINE"),
        "00080060": attr("CS", modality),
        "0008103E": attr("LO", description),
        "00081190": attr("UR", f"{base_url}/studies/{study_uid}/series/{series_uid}"),
        "0020000D": attr("UI", study_uid),
        "0020000E": attr("UI", series_uid),
        "00200011": attr("IS", number),
    }


# The keys of a study and a series result that come from the index (a series result also
# counts its instances): includefield asking for any other needs a stored instance's JSON.
STUDY_KEYS = frozenset(_study_row_attributes((None,) * len(STUDY_COLUMNS), ""))
SERIES_KEYS = frozenset({*_series_row_attributes((None,) * len(SERIES_COLUMNS), ""), "00201209"})


def _instance_attributes(instance: Instance, scope: Scope) -> dict[str, Any]:
    series = instance.series
    study_uid = series.study.study_instance_uid
    return {
        "00080016": attr("UI", instance.sop_class_uid),
        "00080018": attr("UI", instance.sop_instance_uid),
        "00080056": attr("CS", "ONLINE"),
        "00080060": attr("CS", series.modality),
        "00081190": attr(
            "UR",
            f"{scope.base_url}/studies/{study_uid}/series/{series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}",
        ),
        "0020000D": attr("UI", study_uid),
        "0020000E": attr("UI", series.series_instance_uid),
        "00200013": attr("IS", instance.instance_number),
        "00280008": attr("IS", instance.number_of_frames),
        "00280010": attr("US", instance.rows),
        "00280011": attr("US", instance.columns),
    }


# Instance-specific attributes that "includefield=all" must not copy onto a study or series.
INSTANCE_ONLY_GROUPS = (0x0028, 0x7FE0)
INSTANCE_ONLY_TAGS = {
    0x00080018,
    0x00080016,
    0x00200013,
    0x00200032,
    0x00200037,
    0x00201041,
    0x00080008,
    0x00080012,
    0x00080013,
    0x00080022,
    0x00080032,
    0x00080033,
    0x00080023,
}


def _extras(
    representative: dict[str, Any] | None, query: QidoQuery, present: dict[str, Any]
) -> dict[str, Any]:
    """Attributes asked for with includefield that the index lacks, from a stored instance."""
    if representative is None:
        representative = {}
    wanted: Iterable[str]
    if query.include_all:
        wanted = representative.keys()
    else:
        wanted = [f"{tag:08X}" for tag in query.include]
    extra: dict[str, Any] = {}
    for key in wanted:
        if key in present:
            continue
        tag = int(key, 16)
        if key not in representative:
            # Asked for but absent: returned empty (PS3.18 F.2.5), so clients see "no value".
            extra[key] = {"vr": _dictionary_vr(tag)}
            continue
        if query.level != "instance" and (
            tag in INSTANCE_ONLY_TAGS or (tag >> 16) in INSTANCE_ONLY_GROUPS
        ):
            continue
        value = representative[key]
        if "BulkDataURI" in value:
            continue
        extra[key] = value
    return extra


def _needs_representative(query: QidoQuery, known: AbstractSet[str]) -> bool:
    return query.include_all or any(f"{tag:08X}" not in known for tag in query.include)


def _representatives(scope: Scope, key: str, ids: list[Any]) -> dict[Any, dict[str, Any]]:
    """One stored instance's DICOM JSON per study or series id (the lowest instance number)."""
    first: dict[Any, Any] = {}
    for owner, pk in (
        selectors.visible_instances(scope)
        .filter(**{f"{key}__in": ids})
        .order_by(key, "instance_number", "pk")
        .values_list(key, "pk")
    ):
        first.setdefault(owner, pk)
    texts = dict(Instance.objects.filter(pk__in=first.values()).values_list("pk", "dicom_json"))
    return {
        owner: json.loads(with_base(texts[pk], scope.base_url))
        for owner, pk in first.items()
        if texts.get(pk)
    }


def _finish(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(sorted(item.items())) for item in items]


def search_studies(scope: Scope, query: QidoQuery) -> QidoResult:
    """One query: a row per (study, modality) of the page, with instance and series counts.

    Every visible study holds a visible instance, so grouping the page's instances by study
    and modality yields each study of the page with its counts. The SQL is compiled once a
    minute per user, project and shape of query (``Slots``): a viewer's study list and its
    searches come again and again, and compiling this query costs several times running it.
    """
    selectors.require_project(scope)
    study = "series__study__"
    columns = ("series__study_id", *(study + c for c in STUDY_COLUMNS), "series__modality")
    slots = Slots()
    conditions = _conditions(query, slots)

    def rows() -> QuerySet[Any]:
        instances = selectors.visible_instances(scope)
        # Without matching keys or a page, every study a visible instance is in is listed.
        if any(conditions) or query.limit is not None or query.offset:
            matching = _apply_filters(selectors.visible_studies(scope), Study, conditions)
            page = _page(matching.order_by(*STUDY_ORDER), query)
            instances = instances.filter(series__study_id__in=page.values("pk"))
        # A series has one modality, so the counts of a study's rows add up exactly.
        return (
            instances.order_by()
            .values(*columns)
            .annotate(n_instances=Count("pk"), n_series=Count("series_id", distinct=True))
            .order_by(*(study + c for c in STUDY_ORDER), "series__modality")
            .values_list(*columns, "n_instances", "n_series")
        )

    shape = ("qido-studies", query.limit, query.offset, str(conditions))
    found = selectors.cached_rows(scope, shape, rows, slots)
    items: list[dict[str, Any]] = []
    ids: list[uuid.UUID] = []
    for study_pk, group in itertools.groupby(found, key=lambda row: row[0]):
        per_modality = list(group)
        modalities = sorted({row[-3] for row in per_modality})
        item = _study_row_attributes(per_modality[0][1:-3], scope.base_url)
        item["00080061"] = attr("CS", *modalities)
        if 0x00080060 in query.include:
            # OHIF's study list asks for Modality at study level; it means the modalities.
            item["00080060"] = attr("CS", *modalities)
        item["00201206"] = attr("IS", sum(row[-1] for row in per_modality))
        item["00201208"] = attr("IS", sum(row[-2] for row in per_modality))
        ids.append(_uuid(study_pk))
        items.append(item)
    if items and _needs_representative(query, set(items[0])):
        representatives = _representatives(scope, "series__study_id", ids)
        for study_pk, item in zip(ids, items, strict=True):
            item.update(_extras(representatives.get(study_pk), query, item))
    return QidoResult(_finish(items), query.warnings)


def search_series(scope: Scope, query: QidoQuery, study_uid: str | None = None) -> QidoResult:
    """One query: the page of series, each with its study, its instance count and, when
    includefield asks for attributes the index lacks, its first instance's DICOM JSON. The
    SQL is compiled once a minute per user, project and shape of query, as the study search's
    (``Slots``): a viewer asks for a study's series each time it opens the study."""
    selectors.require_project(scope)
    slots = Slots()
    in_study = slots(study_uid) if study_uid is not None else None
    conditions = _conditions(query, slots)
    # Whether attributes must come from a stored instance depends only on the query.
    present = SERIES_KEYS if study_uid is not None else SERIES_KEYS | STUDY_KEYS
    representative = _needs_representative(query, present)

    def rows() -> QuerySet[Any]:
        series = selectors.visible_series(scope)
        if in_study is not None:
            series = series.filter(study__study_instance_uid=in_study)
        instances = selectors.visible_instances(scope).filter(series_id=OuterRef("pk")).order_by()
        study_columns = ("study__" + c for c in STUDY_COLUMNS)
        page = _page(
            _apply_filters(series, Series, conditions).order_by(
                "study__study_instance_uid", "series_number", "series_instance_uid", "pk"
            ),
            query,
        )
        counted = page.annotate(
            n_instances=Subquery(
                instances.values("series_id").annotate(n=Count("pk")).values("n")[:1]
            ),
            first_json=(
                Subquery(instances.order_by("instance_number", "pk").values("dicom_json")[:1])
                if representative
                else Value("", output_field=TextField())
            ),
        )
        return counted.values_list(*SERIES_COLUMNS, *study_columns, "n_instances", "first_json")

    shape = (
        "qido-series",
        study_uid is None,
        representative,
        query.limit,
        query.offset,
        str(conditions),
    )
    found = selectors.cached_rows(scope, shape, rows, slots)
    if study_uid is not None and not found and not query.filters and not query.offset:
        _require_study(scope, study_uid)
    n_series = len(SERIES_COLUMNS)
    items = []
    for row in found:
        item = _series_row_attributes(row[:n_series], scope.base_url)
        if study_uid is None:
            item = {**_study_row_attributes(row[n_series:-2], scope.base_url), **item}
        item["00201209"] = attr("IS", row[-2] or 0)
        if representative:
            stored = json.loads(with_base(row[-1], scope.base_url)) if row[-1] else None
            item.update(_extras(stored, query, item))
        items.append(item)
    return QidoResult(_finish(items), query.warnings)


def search_instances(
    scope: Scope, query: QidoQuery, study_uid: str | None = None, series_uid: str | None = None
) -> QidoResult:
    selectors.require_project(scope)
    queryset = selectors.visible_instances(scope)
    if study_uid is not None:
        queryset = queryset.filter(series__study__study_instance_uid=study_uid)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    queryset = _apply_filters(queryset, Instance, _conditions(query)).select_related(
        "series", "series__study", "series__study__patient"
    )
    want_json = query.include_all or bool(query.include)
    if not want_json:
        queryset = queryset.defer("dicom_json")
    queryset = queryset.order_by(
        "series__study__study_instance_uid",
        "series__series_number",
        "series_id",
        "instance_number",
        "pk",
    )
    instances = list(_page(queryset, query))
    if study_uid is not None and not instances and not query.filters and not query.offset:
        _require_study(scope, study_uid, series_uid)
    items = []
    for instance in instances:
        item: dict[str, Any] = {}
        if study_uid is None:
            item.update(_study_attributes(instance.series.study, scope))
        if series_uid is None:
            item.update(_series_attributes(instance.series, scope))
        item.update(_instance_attributes(instance, scope))
        if want_json and _needs_representative(query, set(item)) and instance.dicom_json:
            stored = json.loads(with_base(instance.dicom_json, scope.base_url))
            item.update(_extras(stored, query, item))
        items.append(item)
    return QidoResult(_finish(items), query.warnings)


def _require_study(scope: Scope, study_uid: str, series_uid: str | None = None) -> None:
    """An empty search under an unknown study or series is a 404, not an empty list."""
    found = selectors.visible_studies(scope).filter(study_instance_uid=study_uid).exists()
    if found and series_uid is not None:
        found = (
            selectors.visible_series(scope)
            .filter(series_instance_uid=series_uid, study__study_instance_uid=study_uid)
            .exists()
        )
    if not found:
        raise ApplicationError(
            f"no study {study_uid}" + (f" / series {series_uid}" if series_uid else ""),
            status_code=404,
        )


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"
