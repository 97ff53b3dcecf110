"""Per-slice Dice for every pair of raters of a reading study, kept up to date incrementally,
and the tables built from it (Chassagnon et al. 2020, Table 2).

**Pairs.** For every case and every protocol slice, for ILD and for lung:

* reader vs reader (``inter``): every two readers' first reads;
* reader vs own repeat read (``intra``);
* reader vs engine (``engine``): every first read vs every segmentation engine whose SUCCEEDED
  job covers the series (:mod:`reports.services.engines`);
* vs consensus (``consensus``): every first read and every engine vs the STAPLE consensus of the
  readers' *submitted* first reads (at least two). STAPLE (SimpleITK, via
  ``inference.stats.staple``) runs once per case, structure and series on the stack of its
  protocol slices, cropped to the bounding box of the union of the readers' masks plus
  ``STAPLE_MARGIN_PX`` pixels (the EM would otherwise be dominated by empty background, see that
  module); the consensus is the probability ≥ 0.5. When every reader's mask is empty the
  consensus is empty.

**Slices.** The case's protocol slices (``ReadingCase.slice_sop_instance_uids``, then the baseline
series' ones in a longitudinal case). A slice a rater did not contour is an empty mask for that
rater (nothing drawn = no disease seen there).

**Empty-slice rule.** ``inference.stats.agreement``'s default, ``empty="skip"``: a slice where both
masks are empty carries no information on agreement; it is excluded from every median, IQR and
bootstrap and *counted* (``n_excluded``), so each number says how many slices it rests on and
how many were left out. One empty mask against a non-empty one is Dice 0 and always kept.

**Incremental.** Each :class:`~reports.models.SliceAgreement` row records the contour versions (and
engine job) it was computed from, as ``inputs_digest``. :func:`sync_study` recomputes only the
rows whose inputs changed, and skips even that check when the study's fingerprint is unchanged;
:func:`refresh_for_contour` recomputes the rows of one saved contour (and its case's consensus)
straight away. Counts are taken on the bit-packed masks (``|A|``, ``|B|``, ``|A ∩ B|`` by
popcount), ``Dice = 2 |A ∩ B| / (|A| + |B|)``; tests check every value against
``inference.stats.agreement.dice`` and an independent implementation.

**Statistics.** Median (IQR) from ``inference.stats.summarize``; 95 % CI of the median by the
patient-cluster bootstrap of ``inference.stats.bootstrap_ci`` (percentile, seeded; slices of one
patient are resampled together), cached by the digest of its inputs; the table layout from
``inference.stats.pairwise_matrix``. Only reads whose assignments are submitted count unless
``include_open`` is set.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from annotation.models import Assignment, ContourVersion, ReadingCase, ReadingStudy, Structure
from annotation.selectors import latest_contours
from core.models import User
from inference.stats import (
    AgreementMatrix,
    BootstrapCI,
    MedianIQR,
    bootstrap_ci,
    pairwise_matrix,
    staple,
    summarize,
)
from jobs.models import Job
from reports.models import AgreementState, BootstrapCache, SliceAgreement
from reports.services import engines as engine_io
from studies.models import Instance

logger = logging.getLogger(__name__)

STRUCTURES = (Structure.ILD.value, Structure.LUNG.value)
STAPLE = "staple"
STAPLE_MARGIN_PX = 4
EMPTY_RULE_TEXT = (
    "Slices where both masks are empty are excluded from the medians, IQRs and bootstrap "
    "intervals and counted as 'excluded'; a slice contoured by one rater only has Dice 0."
)
CHUNK = 500

Packed = npt.NDArray[np.uint8]


# ------------------------------------------------------------------------------- rater keys


def reader_key(assignment: Assignment) -> str:
    return f"r:{assignment.reader_id}" + (":repeat" if assignment.is_repeat else "")


def engine_key(engine: str) -> str:
    return f"e:{engine}"


def rater_kind(key: str) -> str:
    if key == STAPLE:
        return "consensus"
    return "engine" if key.startswith("e:") else "reader"


def rater_labels(study: ReadingStudy) -> dict[str, str]:
    """Display names: readers' usernames (``"(repeat)"`` for repeat reads), engine names,
    ``"STAPLE consensus"``."""
    labels: dict[str, str] = {STAPLE: "STAPLE consensus"}
    users = User.objects.filter(assignments__study=study).distinct().values_list("id", "username")
    for user_id, username in users:
        labels[f"r:{user_id}"] = username
        labels[f"r:{user_id}:repeat"] = f"{username} (repeat)"
    return labels


def label_of(key: str, labels: dict[str, str]) -> str:
    if key in labels:
        return labels[key]
    return key[2:] if key.startswith("e:") else key


# ------------------------------------------------------------------------------ masks, Dice


def unpack_to_packed(data: bytes) -> Packed:
    """A contour's stored mask as its packed bits (``numpy.packbits`` of the row-major mask)."""
    return np.frombuffer(zlib.decompress(bytes(data)), dtype=np.uint8)


def pack(mask: npt.NDArray[np.bool_]) -> Packed:
    return np.packbits(np.asarray(mask, dtype=bool), axis=None)


def popcount(packed: Packed) -> int:
    return int(np.bitwise_count(packed).sum())


def overlap_count(a: Packed, b: Packed) -> int:
    return int(np.bitwise_count(np.bitwise_and(a, b)).sum())


def dice_from_counts(size_a: int, size_b: int, overlap: int) -> float | None:
    """``2 |A ∩ B| / (|A| + |B|)``; ``None`` for two empty masks (excluded, counted)."""
    total = size_a + size_b
    return None if total == 0 else 2.0 * overlap / total


def digest(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


# ---------------------------------------------------------------------------- sync context


@dataclass(frozen=True)
class _ContourRef:
    id: Any
    pixel_count: int
    rows: int
    columns: int


@dataclass
class _RowSpec:
    case_id: Any
    structure: str
    sop: str
    slice_index: int
    kind: str
    rater_a: str
    rater_b: str
    assignment_a_id: Any
    assignment_b_id: Any
    contour_a: _ContourRef | None
    contour_b: _ContourRef | None
    job: Job | None
    inputs_digest: str

    @property
    def key(self) -> tuple[Any, str, str, str, str]:
        return (self.case_id, self.structure, self.sop, self.rater_a, self.rater_b)


@dataclass
class _Context:
    study: ReadingStudy
    cases: list[ReadingCase]
    reads: dict[Any, list[Assignment]]
    latest: dict[tuple[Any, str, str], _ContourRef]
    dims: dict[str, tuple[Any, int, int]]
    engines: dict[Any, dict[str, Job]]

    def slices(self, case: ReadingCase) -> list[tuple[int, str]]:
        uids = list(case.slice_sop_instance_uids or []) + list(
            case.baseline_slice_sop_instance_uids or []
        )
        return [(index, uid) for index, uid in enumerate(uids) if uid in self.dims]


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _context(study: ReadingStudy, cases: list[ReadingCase]) -> _Context:
    case_ids = [case.pk for case in cases]
    reads: dict[Any, list[Assignment]] = defaultdict(list)
    for assignment in (
        Assignment.objects.filter(case_id__in=case_ids)
        .select_related("reader")
        .order_by("reader__username", "is_repeat")
    ):
        reads[assignment.case_id].append(assignment)
    assignment_ids = [a.pk for items in reads.values() for a in items]
    latest: dict[tuple[Any, str, str], _ContourRef] = {}
    for ids in _chunks(assignment_ids):
        rows = latest_contours(ContourVersion.objects.filter(assignment_id__in=ids)).values_list(
            "id",
            "assignment_id",
            "structure",
            "referenced_sop_instance_uid",
            "pixel_count",
            "mask_rows",
            "mask_columns",
        )
        for pk, assignment_id, structure, sop, count, n_rows, n_columns in rows:
            latest[(assignment_id, structure, sop)] = _ContourRef(pk, count, n_rows, n_columns)
    uids = sorted(
        {
            uid
            for case in cases
            for uid in list(case.slice_sop_instance_uids or [])
            + list(case.baseline_slice_sop_instance_uids or [])
        }
    )
    dims: dict[str, tuple[Any, int, int]] = {}
    for chunk in _chunks(uids, 2000):
        for uid, series_id, n_rows, n_columns in Instance.objects.filter(
            sop_instance_uid__in=chunk
        ).values_list("sop_instance_uid", "series_id", "rows", "columns"):
            dims[uid] = (series_id, n_rows, n_columns)
    series_ids = sorted({series_id for series_id, _, _ in dims.values()}, key=str)
    return _Context(
        study=study,
        cases=cases,
        reads=dict(reads),
        latest=latest,
        dims=dims,
        engines=engine_io.segmentation_jobs(series_ids),
    )


def _consensus_digest(
    ctx: _Context, case: ReadingCase, structure: str, readers: list[Assignment]
) -> str:
    parts = sorted(
        (str(a.pk), uid, str(ctx.latest[(a.pk, structure, uid)].id))
        for a in readers
        for _, uid in ctx.slices(case)
        if (a.pk, structure, uid) in ctx.latest
    )
    return digest("staple", STAPLE_MARGIN_PX, *[a.pk for a in readers], *parts)


def _expected(ctx: _Context, case: ReadingCase, structure: str) -> list[_RowSpec]:
    reads = ctx.reads.get(case.pk, [])
    first = [a for a in reads if not a.is_repeat]
    repeats = {a.reader_id: a for a in reads if a.is_repeat}
    submitted_first = [a for a in first if a.status == Assignment.Status.SUBMITTED]
    consensus_digest = (
        _consensus_digest(ctx, case, structure, submitted_first)
        if len(submitted_first) >= 2
        else None
    )
    specs: list[_RowSpec] = []

    def ref(assignment: Assignment, uid: str) -> _ContourRef | None:
        return ctx.latest.get((assignment.pk, structure, uid))

    for index, uid in ctx.slices(case):
        series_id = ctx.dims[uid][0]
        jobs = ctx.engines.get(series_id, {})

        def add(
            kind: str,
            a: Assignment | None,
            b: Assignment | None,
            key_a: str,
            key_b: str,
            job: Job | None,
            base: str,
            *,
            index: int = index,
            uid: str = uid,
        ) -> None:
            contour_a = ref(a, uid) if a is not None else None
            contour_b = ref(b, uid) if b is not None else None
            specs.append(
                _RowSpec(
                    case_id=case.pk,
                    structure=structure,
                    sop=uid,
                    slice_index=index,
                    kind=kind,
                    rater_a=key_a,
                    rater_b=key_b,
                    assignment_a_id=a.pk if a else None,
                    assignment_b_id=b.pk if b else None,
                    contour_a=contour_a,
                    contour_b=contour_b,
                    job=job,
                    inputs_digest=digest(
                        base,
                        contour_a.id if contour_a else "-",
                        contour_b.id if contour_b else "-",
                        job.pk if job else "-",
                    ),
                )
            )

        for a, b in itertools.combinations(first, 2):
            add("inter", a, b, reader_key(a), reader_key(b), None, "inter")
        for a in first:
            if (repeat := repeats.get(a.reader_id)) is not None:
                add("intra", a, repeat, reader_key(a), reader_key(repeat), None, "intra")
        for name, job in sorted(jobs.items()):
            for a in first:
                add("engine", a, None, reader_key(a), engine_key(name), job, "engine")
        if consensus_digest is not None:
            for a in first:
                add("consensus", a, None, reader_key(a), STAPLE, None, consensus_digest)
            for name, job in sorted(jobs.items()):
                add("consensus", None, None, engine_key(name), STAPLE, job, consensus_digest)
    return specs


# ------------------------------------------------------------------------------- computing


@dataclass
class _MaskSource:
    """Packed masks for the rows being computed: contours by id, engine slices, consensus."""

    ctx: _Context
    contours: dict[Any, Packed] = field(default_factory=dict)
    engine_slices: dict[tuple[Any, str], tuple[Packed, Packed, tuple[int, int]] | None] = field(
        default_factory=dict
    )
    consensus: dict[tuple[Any, str, str], Packed] = field(default_factory=dict)

    def load_contours(self, ids: Iterable[Any]) -> None:
        missing = sorted({i for i in ids if i not in self.contours}, key=str)
        for chunk in _chunks(missing):
            for pk, data in ContourVersion.objects.filter(pk__in=chunk).values_list("id", "mask"):
                self.contours[pk] = unpack_to_packed(bytes(data))

    def load_engine(self, job: Job, uids: set[str]) -> None:
        wanted = {uid for uid in uids if (job.pk, uid) not in self.engine_slices}
        if not wanted:
            return
        series = job.series
        label_map = engine_io.load_label_map(job, series, wanted) if series else None
        for uid in wanted:
            labels = label_map.slices.get(uid) if label_map is not None else None
            if labels is None:
                self.engine_slices[(job.pk, uid)] = None
                continue
            lung, ild = engine_io.split_labels(labels)
            self.engine_slices[(job.pk, uid)] = (pack(lung), pack(ild), labels.shape)

    def engine(self, job: Job, uid: str, structure: str) -> tuple[Packed, tuple[int, int]] | None:
        found = self.engine_slices.get((job.pk, uid))
        if found is None:
            return None
        lung, ild, shape = found
        return (ild if structure == Structure.ILD else lung), shape

    def unpacked(self, ref: _ContourRef | None, rows: int, columns: int) -> npt.NDArray[np.bool_]:
        if ref is None:
            return np.zeros((rows, columns), dtype=bool)
        bits = np.unpackbits(self.contours[ref.id], count=rows * columns)
        return bits.reshape(rows, columns).astype(bool)


def _compute_consensus(
    source: _MaskSource, case: ReadingCase, structure: str, readers: list[Assignment]
) -> None:
    """STAPLE of the submitted first reads on each series' protocol slices of the case."""
    ctx = source.ctx
    by_grid: dict[tuple[Any, int, int], list[str]] = defaultdict(list)
    for _, uid in ctx.slices(case):
        by_grid[ctx.dims[uid]].append(uid)
    for (_, n_rows, n_columns), uids in by_grid.items():
        refs = [[ctx.latest.get((a.pk, structure, uid)) for uid in uids] for a in readers]
        source.load_contours(r.id for row in refs for r in row if r is not None)
        stacks = [np.stack([source.unpacked(r, n_rows, n_columns) for r in row]) for row in refs]
        union = np.logical_or.reduce(stacks)
        consensus = np.zeros_like(union)
        if union.any():
            _, js, is_ = np.nonzero(union)
            j0, j1 = max(int(js.min()) - STAPLE_MARGIN_PX, 0), int(js.max()) + STAPLE_MARGIN_PX + 1
            i0, i1 = (
                max(int(is_.min()) - STAPLE_MARGIN_PX, 0),
                int(is_.max()) + STAPLE_MARGIN_PX + 1,
            )
            result = staple([s[:, j0:j1, i0:i1] for s in stacks])
            consensus[:, j0:j1, i0:i1] = result.consensus
        for k, uid in enumerate(uids):
            source.consensus[(case.pk, structure, uid)] = pack(consensus[k])


def _mask_of(
    source: _MaskSource,
    spec: _RowSpec,
    side: str,
) -> tuple[Packed | None, int, str]:
    """(packed mask or None when empty, size, error) for one side of a row."""
    ctx = source.ctx
    _, n_rows, n_columns = ctx.dims[spec.sop]
    key = spec.rater_a if side == "a" else spec.rater_b
    ref = spec.contour_a if side == "a" else spec.contour_b
    if key == STAPLE:
        packed = source.consensus[(spec.case_id, spec.structure, spec.sop)]
        return packed, popcount(packed), ""
    if key.startswith("e:"):
        assert spec.job is not None
        found = source.engine(spec.job, spec.sop, spec.structure)
        if found is None:
            return None, 0, f"{key[2:]}: no label-map slice for this instance"
        packed, shape = found
        if tuple(shape) != (n_rows, n_columns):
            return None, 0, f"{key[2:]}: label map grid {shape} differs from {n_rows}x{n_columns}"
        return packed, popcount(packed), ""
    if ref is None or ref.pixel_count == 0:
        return None, 0, ""
    if (ref.rows, ref.columns) != (n_rows, n_columns):
        return None, 0, "contour mask grid differs from the slice's"
    return source.contours[ref.id], popcount(source.contours[ref.id]), ""


def _compute(ctx: _Context, specs: list[_RowSpec]) -> list[SliceAgreement]:
    source = _MaskSource(ctx)
    source.load_contours(
        ref.id
        for spec in specs
        for ref in (spec.contour_a, spec.contour_b)
        if ref is not None and ref.pixel_count > 0
    )
    by_job: dict[Any, tuple[Job, set[str]]] = {}
    for spec in specs:
        if spec.job is not None:
            by_job.setdefault(spec.job.pk, (spec.job, set()))[1].add(spec.sop)
    for job, uids in by_job.values():
        source.load_engine(job, uids)
    cases = {case.pk: case for case in ctx.cases}
    for case_id, structure in sorted(
        {(s.case_id, s.structure) for s in specs if s.rater_b == STAPLE}, key=str
    ):
        readers = [
            a
            for a in ctx.reads.get(case_id, [])
            if not a.is_repeat and a.status == Assignment.Status.SUBMITTED
        ]
        _compute_consensus(source, cases[case_id], structure, readers)
    rows = []
    for spec in specs:
        mask_a, size_a, error_a = _mask_of(source, spec, "a")
        mask_b, size_b, error_b = _mask_of(source, spec, "b")
        error = error_a or error_b
        overlap = 0
        if not error and mask_a is not None and mask_b is not None and size_a and size_b:
            overlap = overlap_count(mask_a, mask_b)
        rows.append(
            SliceAgreement(
                study_id=ctx.study.pk,
                case_id=spec.case_id,
                structure=spec.structure,
                sop_instance_uid=spec.sop,
                slice_index=spec.slice_index,
                kind=spec.kind,
                rater_a=spec.rater_a,
                rater_b=spec.rater_b,
                assignment_a_id=spec.assignment_a_id,
                assignment_b_id=spec.assignment_b_id,
                contour_a_id=spec.contour_a.id if spec.contour_a else None,
                contour_b_id=spec.contour_b.id if spec.contour_b else None,
                engine_job=spec.job,
                inputs_digest=spec.inputs_digest,
                size_a=0 if error else size_a,
                size_b=0 if error else size_b,
                overlap=overlap,
                dice=None if error else dice_from_counts(size_a, size_b, overlap),
                error=error[:200],
            )
        )
    return rows


# ------------------------------------------------------------------------------------ sync


@dataclass(frozen=True)
class SyncResult:
    rows_total: int
    rows_computed: int
    rows_deleted: int
    skipped: bool
    seconds: float
    # rows left stale because there were more than the caller allowed to compute inline
    pending: int = 0


def _hash(value: object) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()


def study_fingerprint(study: ReadingStudy, *, exclude_contour: Any = None) -> dict[str, Any]:
    """What the rows depend on, in cheap aggregate queries (no masks): the contour count and
    newest contour, which reads are submitted, the cases' protocols, the engine jobs.

    ``exclude_contour`` gives the fingerprint as it was before that contour was saved.
    """
    contours = ContourVersion.objects.filter(assignment__study=study)
    if exclude_contour is not None:
        contours = contours.exclude(pk=exclude_contour)
    counts = contours.aggregate(n=Count("id"), last=Max("created"))
    reads = study.assignments.order_by("pk").values_list("pk", "is_repeat", "status")
    cases = study.cases.order_by("pk").values_list("pk", "protocol_status")
    jobs = (
        Job.objects.filter(
            Q(series__reading_cases__study=study) | Q(series__baseline_reading_cases__study=study),
            kind=engine_io.SEGMENTATION_KIND,
            status=Job.Status.SUCCEEDED,
        )
        .order_by("pk")
        .values_list("pk", flat=True)
        .distinct()
    )
    return {
        "contours": [counts["n"], counts["last"].isoformat() if counts["last"] else None],
        # only submitted-or-not matters (the consensus uses submitted first reads)
        "reads": _hash(
            [(pk, rep, status == Assignment.Status.SUBMITTED) for pk, rep, status in reads]
        ),
        "cases": _hash(list(cases)),
        "jobs": _hash(list(jobs)),
    }


def _apply(
    ctx: _Context,
    cases: list[ReadingCase],
    structures: Sequence[str],
    max_rows: int | None = None,
) -> tuple[int, int, int, int]:
    """Bring the rows of ``cases`` × ``structures`` up to date; (total, computed, deleted,
    pending). With more than ``max_rows`` stale rows nothing is changed and they are pending."""
    expected: dict[tuple[Any, str, str, str, str], _RowSpec] = {}
    for case in cases:
        for structure in structures:
            for spec in _expected(ctx, case, structure):
                expected[spec.key] = spec
    keep: set[tuple[Any, str, str, str, str]] = set()
    stale: list[Any] = []
    for case_ids in _chunks([c.pk for c in cases]):
        existing = SliceAgreement.objects.filter(
            case_id__in=list(case_ids), structure__in=list(structures)
        ).values_list(
            "id", "case_id", "structure", "sop_instance_uid", "rater_a", "rater_b", "inputs_digest"
        )
        for pk, case_id, structure, sop, rater_a, rater_b, row_digest in existing:
            key = (case_id, structure, sop, rater_a, rater_b)
            wanted_spec = expected.get(key)
            if wanted_spec is not None and wanted_spec.inputs_digest == row_digest:
                keep.add(key)
            else:
                stale.append(pk)
    todo = [spec for key, spec in expected.items() if key not in keep]
    if max_rows is not None and len(todo) > max_rows:
        return len(expected), 0, 0, len(todo)
    deleted = 0
    for ids in _chunks(stale, 2000):
        deleted += SliceAgreement.objects.filter(id__in=list(ids)).delete()[0]
    computed = 0
    # a few cases at a time: masks of one batch in memory, never the whole study's
    for chunk_cases in _chunks(sorted({s.case_id for s in todo}, key=str), 20):
        wanted = set(chunk_cases)
        rows = _compute(ctx, [spec for spec in todo if spec.case_id in wanted])
        SliceAgreement.objects.bulk_create(rows, batch_size=1000)
        computed += len(rows)
    return len(expected), computed, deleted, 0


def _lock_state(study: ReadingStudy) -> AgreementState:
    AgreementState.objects.get_or_create(
        study=study, defaults={"fingerprint": {}, "synced_at": timezone.now()}
    )
    return AgreementState.objects.select_for_update().get(study=study)


def sync_study(
    study: ReadingStudy, *, force: bool = False, max_rows: int | None = None
) -> SyncResult:
    """Bring every per-slice row of ``study`` up to date; recompute only what changed.

    ``max_rows``: compute inline only up to this many stale rows; beyond it change nothing and
    report them as ``pending`` (a page then asks for the background task instead of making the
    coordinator wait minutes for a first computation)."""
    started = time.perf_counter()
    with transaction.atomic():
        state = _lock_state(study)
        fingerprint = study_fingerprint(study)
        if not force and state.fingerprint == fingerprint:
            total = SliceAgreement.objects.filter(study=study).count()
            return SyncResult(total, 0, 0, True, time.perf_counter() - started)
        cases = list(study.cases.all())
        ctx = _context(study, cases)
        total, computed, deleted, pending = _apply(ctx, cases, STRUCTURES, max_rows)
        if pending:
            return SyncResult(total, 0, 0, False, time.perf_counter() - started, pending)
        SliceAgreement.objects.filter(study=study).exclude(
            case_id__in=[c.pk for c in cases]
        ).delete()
        seconds = time.perf_counter() - started
        AgreementState.objects.filter(pk=state.pk).update(
            fingerprint=fingerprint,
            synced_at=timezone.now(),
            last_sync_s=seconds,
            rows_computed=computed,
        )
    return SyncResult(total, computed, deleted, False, seconds)


def refresh_for_contour(contour_version: ContourVersion) -> SyncResult:
    """Recompute the rows touched by a newly saved contour version: its slice's pairs and its
    case's consensus for that structure. Call after the contour's transaction commits
    (``transaction.on_commit``); cheap (one case), safe to call twice."""
    started = time.perf_counter()
    assignment = Assignment.objects.select_related("case", "study").get(
        pk=contour_version.assignment_id
    )
    with transaction.atomic():
        state = _lock_state(assignment.study)
        ctx = _context(assignment.study, [assignment.case])
        total, computed, deleted, _ = _apply(ctx, [assignment.case], [contour_version.structure])
        if state.fingerprint and state.fingerprint == study_fingerprint(
            assignment.study, exclude_contour=contour_version.pk
        ):
            # Every other row was current before this save and this one is now: the study is
            # in sync. Otherwise leave the old fingerprint; the next sync checks every row.
            AgreementState.objects.filter(pk=state.pk).update(
                fingerprint=study_fingerprint(assignment.study), synced_at=timezone.now()
            )
    return SyncResult(total, computed, deleted, False, time.perf_counter() - started)


def refresh_case(case: ReadingCase) -> SyncResult:
    """Recompute a case's stale rows (e.g. after a segmentation job for its series finished)."""
    started = time.perf_counter()
    with transaction.atomic():
        _lock_state(case.study)
        ctx = _context(case.study, [case])
        total, computed, deleted, _ = _apply(ctx, [case], STRUCTURES)
    return SyncResult(total, computed, deleted, False, time.perf_counter() - started)


# --------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Filters:
    structure: str = Structure.ILD.value
    cohorts: tuple[str, ...] = ()
    engines: tuple[str, ...] | None = None  # None: every engine
    include_open: bool = False
    ci: bool = True
    n_resamples: int = 2000
    seed: int = 0


def _rows_query(study: ReadingStudy, filters: Filters) -> Any:
    rows = SliceAgreement.objects.filter(study=study, structure=filters.structure)
    if filters.cohorts:
        rows = rows.filter(case__series__study__patient__cohort__in=list(filters.cohorts))
    if not filters.include_open:
        submitted = Assignment.Status.SUBMITTED
        rows = rows.filter(Q(assignment_a__isnull=True) | Q(assignment_a__status=submitted))
        rows = rows.filter(Q(assignment_b__isnull=True) | Q(assignment_b__status=submitted))
    if filters.engines is not None:
        allowed = [engine_key(e) for e in filters.engines]
        for side in ("rater_a", "rater_b"):
            rows = rows.exclude(Q(**{f"{side}__startswith": "e:"}) & ~Q(**{f"{side}__in": allowed}))
    return rows


@dataclass
class PairResult:
    """One cell: a pair of raters, its per-slice Dice pooled over patients."""

    kind: str
    rater_a: str
    rater_b: str
    label_a: str
    label_b: str
    summary: MedianIQR
    n_slices: int
    n_errors: int
    n_patients: int
    ci: BootstrapCI | None = None
    ci_error: str = ""
    values: npt.NDArray[np.float64] | None = None  # per slice, NaN = both empty (for plots)

    @property
    def text(self) -> str:
        return self.summary.format(2)

    @property
    def ci_text(self) -> str:
        if self.ci is None:
            return "NA"
        return f"{self.ci.low:.2f}\u2013{self.ci.high:.2f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rater_a": self.rater_a,
            "rater_b": self.rater_b,
            "label_a": self.label_a,
            "label_b": self.label_b,
            "text": self.text,
            **self.summary.to_dict(),
            "n_slices": self.n_slices,
            "n_errors": self.n_errors,
            "n_patients": self.n_patients,
            "ci": self.ci.to_dict() if self.ci else None,
            "ci_text": self.ci_text,
            "ci_error": self.ci_error,
        }


@dataclass
class AgreementReport:
    study: ReadingStudy
    filters: Filters
    raters: list[str]
    labels: dict[str, str]
    pairs: list[PairResult]
    table: list[list[str]]
    table_keys: list[list[tuple[str, str] | None]]
    sync: SyncResult | None = None
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[PairResult]:
        return [p for p in self.pairs if p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": {"id": str(self.study.pk), "name": self.study.name},
            "structure": self.filters.structure,
            "cohorts": list(self.filters.cohorts),
            "include_open": self.filters.include_open,
            "empty_rule": EMPTY_RULE_TEXT,
            "raters": [{"key": k, "label": self.labels.get(k, k)} for k in self.raters],
            "table": self.table,
            "pairs": [p.to_dict() for p in self.pairs],
            "notes": self.notes,
        }


def cached_bootstrap(
    values: npt.NDArray[np.float64],
    clusters: npt.NDArray[Any],
    *,
    n_resamples: int,
    seed: int,
) -> BootstrapCI:
    """``bootstrap_ci`` of the median, clustered by patient, cached by the digest of its inputs."""
    key = hashlib.sha1()
    key.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    key.update("\x00".join(str(c) for c in clusters).encode())
    key.update(f"median|percentile|0.95|{n_resamples}|{seed}".encode())
    hexdigest = key.hexdigest()
    cached = BootstrapCache.objects.filter(digest=hexdigest).first()
    if cached is not None:
        return BootstrapCI(**cached.result)
    result = bootstrap_ci(values, clusters=clusters, n_resamples=n_resamples, seed=seed)
    BootstrapCache.objects.get_or_create(digest=hexdigest, defaults={"result": result.__dict__})
    return result


def pair_values(
    study: ReadingStudy, filters: Filters
) -> dict[tuple[str, str, str], tuple[npt.NDArray[np.float64], npt.NDArray[Any], int]]:
    """``(kind, rater_a, rater_b)`` → (Dice per slice with NaN for both-empty, patient of each,
    number of slices that could not be compared)."""
    grouped: dict[tuple[str, str, str], tuple[list[float], list[str], list[int]]] = {}
    rows = (
        _rows_query(study, filters)
        .order_by("case__label", "slice_index")
        .values_list(
            "kind", "rater_a", "rater_b", "dice", "error", "case__series__study__patient_id"
        )
    )
    for kind, rater_a, rater_b, dice_value, error, patient in rows:
        values, clusters, errors = grouped.setdefault((kind, rater_a, rater_b), ([], [], [0]))
        if error:
            errors[0] += 1
            continue
        values.append(np.nan if dice_value is None else float(dice_value))
        clusters.append(str(patient))
    return {
        key: (np.asarray(values, dtype=np.float64), np.asarray(clusters), errors[0])
        for key, (values, clusters, errors) in grouped.items()
    }


def _order(keys: Iterable[str], labels: dict[str, str]) -> list[str]:
    readers = sorted({k for k in keys if rater_kind(k) == "reader" and not k.endswith(":repeat")})
    readers.sort(key=lambda k: labels.get(k, k))
    engines = sorted({k for k in keys if rater_kind(k) == "engine"})
    return readers + engines


def agreement_report(
    study: ReadingStudy, filters: Filters, *, sync: bool = True, max_rows: int | None = None
) -> AgreementReport:
    """Every pair's median (IQR) Dice and bootstrap CI, and the Table 2 matrix.

    ``sync``: first bring the rows up to date (at most ``max_rows`` inline, see
    :func:`sync_study`)."""
    sync_result = sync_study(study, max_rows=max_rows) if sync else None
    labels = rater_labels(study)
    data = pair_values(study, filters)
    pairs: list[PairResult] = []
    for (kind, rater_a, rater_b), (values, clusters, n_errors) in sorted(data.items()):
        summary = summarize(values)
        result = PairResult(
            kind=kind,
            rater_a=rater_a,
            rater_b=rater_b,
            label_a=label_of(rater_a, labels),
            label_b=label_of(rater_b, labels),
            summary=summary,
            n_slices=int(values.size),
            n_errors=n_errors,
            n_patients=len(set(clusters[~np.isnan(values)].tolist())) if values.size else 0,
            values=values,
        )
        if filters.ci:
            try:
                result.ci = cached_bootstrap(
                    values, clusters, n_resamples=filters.n_resamples, seed=filters.seed
                )
            except ValueError as error:
                result.ci_error = str(error)
        pairs.append(result)
    table_values = {
        (p.rater_a, p.rater_b): data[(p.kind, p.rater_a, p.rater_b)][0]
        for p in pairs
        if p.kind in ("inter", "engine")
    }
    raters = _order([k for pair in table_values for k in pair], labels)
    table: list[list[str]] = []
    keys: list[list[tuple[str, str] | None]] = []
    if len(raters) >= 2:
        table, keys = table2(pairwise_matrix(table_values, raters=raters), labels)
    notes = [EMPTY_RULE_TEXT]
    if sync_result is not None and sync_result.pending:
        notes.append(
            f"{sync_result.pending} per-slice comparisons changed and are being computed in "
            "the background: these numbers are from the rows computed before; reload later."
        )
    if any(p.n_errors for p in pairs):
        notes.append("Slices that could not be compared (grid mismatch) are counted as errors.")
    return AgreementReport(
        study=study,
        filters=filters,
        raters=raters,
        labels=labels,
        pairs=pairs,
        table=table,
        table_keys=keys,
        sync=sync_result,
        notes=notes,
    )


def table2(
    matrix: AgreementMatrix, labels: dict[str, str]
) -> tuple[list[list[str]], list[list[tuple[str, str] | None]]]:
    """Table 2's layout from ``AgreementMatrix.table()``: header ``Reader | raters[1:]``, one
    row per reader (engines are columns only), ``median (q1–q3)`` above the diagonal, ``...``
    on and below it. Returns the cells and, per cell, the rater pair it summarises (for links)."""
    raw = matrix.table()
    raters = list(matrix.raters)
    cells = [["Reader", *[label_of(r, labels) for r in raters[1:]]]]
    keys: list[list[tuple[str, str] | None]] = [[None] * len(raters)]
    for i, row in enumerate(raw[1:]):
        rater = raters[i]
        if rater_kind(rater) != "reader":
            continue
        row_keys: list[tuple[str, str] | None] = [None]
        for j, other in enumerate(raters[1:], start=1):
            found = j > i and matrix.get(rater, other) is not None
            pair = (rater, other) if (rater, other) in matrix.cells else (other, rater)
            row_keys.append(pair if found else None)
        cells.append([label_of(rater, labels), *row[1:]])
        keys.append(row_keys)
    return cells, keys


def slice_rows(
    study: ReadingStudy, filters: Filters, rater_a: str | None = None, rater_b: str | None = None
) -> list[dict[str, Any]]:
    """The per-slice data behind a cell (or every cell): one dict per slice and pair."""
    from reports.selectors import export_patient_id

    labels = rater_labels(study)
    rows = _rows_query(study, filters)
    if rater_a is not None and rater_b is not None:
        rows = rows.filter(
            Q(rater_a=rater_a, rater_b=rater_b) | Q(rater_a=rater_b, rater_b=rater_a)
        )
    from studies.models import Patient

    case_patient = dict(study.cases.values_list("pk", "series__study__patient_id"))
    patients = {
        p.pk: (export_patient_id(p), p.cohort)
        for p in Patient.objects.filter(pk__in=set(case_patient.values()))
    }
    case_labels = dict(study.cases.values_list("pk", "label"))
    fields = (
        "id",
        "kind",
        "structure",
        "rater_a",
        "rater_b",
        "case_id",
        "slice_index",
        "sop_instance_uid",
        "size_a",
        "size_b",
        "overlap",
        "dice",
        "error",
        "contour_a_id",
        "contour_b_id",
        "engine_job_id",
        "assignment_a_id",
        "assignment_b_id",
    )
    values = rows.order_by("kind", "rater_a", "rater_b", "case__label", "slice_index").values_list(
        *fields
    )

    def text(value: Any) -> str | None:
        return str(value) if value else None

    out = []
    for row in values:
        item = dict(zip(fields, row, strict=True))
        pseudonym, cohort = patients[case_patient[item["case_id"]]]
        out.append(
            {
                "id": str(item["id"]),
                "kind": item["kind"],
                "structure": item["structure"],
                "rater_a": item["rater_a"],
                "rater_b": item["rater_b"],
                "label_a": label_of(item["rater_a"], labels),
                "label_b": label_of(item["rater_b"], labels),
                "case": case_labels[item["case_id"]],
                "case_id": str(item["case_id"]),
                "patient": pseudonym,
                "cohort": cohort,
                "slice_index": item["slice_index"],
                "sop_instance_uid": item["sop_instance_uid"],
                "pixels_a": item["size_a"],
                "pixels_b": item["size_b"],
                "overlap": item["overlap"],
                "dice": item["dice"],
                "both_empty": item["dice"] is None and not item["error"],
                "error": item["error"],
                "contour_a": text(item["contour_a_id"]),
                "contour_b": text(item["contour_b_id"]),
                "engine_job": text(item["engine_job_id"]),
                "assignment_a": text(item["assignment_a_id"]),
                "assignment_b": text(item["assignment_b_id"]),
            }
        )
    return out


def consensus_mask(case: ReadingCase, structure: str, sop: str) -> npt.NDArray[np.bool_] | None:
    """The STAPLE consensus of the case's submitted first reads on one slice (``None`` with
    fewer than two submitted first reads)."""
    ctx = _context(case.study, [case])
    readers = [
        a
        for a in ctx.reads.get(case.pk, [])
        if not a.is_repeat and a.status == Assignment.Status.SUBMITTED
    ]
    if len(readers) < 2 or sop not in ctx.dims:
        return None
    source = _MaskSource(ctx)
    _compute_consensus(source, case, structure, readers)
    _, n_rows, n_columns = ctx.dims[sop]
    bits = np.unpackbits(source.consensus[(case.pk, structure, sop)], count=n_rows * n_columns)
    return bits.reshape(n_rows, n_columns).astype(bool)
