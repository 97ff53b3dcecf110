"""De-identify DICOM datasets on ingest (PS3.15 Annex E, Basic Application Level Confidentiality Profile).

Why this exists: chest CT arrives from scanners, PACS exports and public collections with names, IDs,
dates and institution details in the header. The reading app must never hold those outside the
admin-only key table, yet it must still know that two studies belong to the same (pseudonymous)
patient, that two series share a frame of reference, and how many days separate baseline and
follow-up. So the mapping is *deterministic and keyed*: every derived value is an HMAC-SHA256 of the
original under the site's secret. No state is kept between calls, so separate imports, processes and
months later all agree, and without the secret nothing can be linked back.

What is applied (Annex E, Table E.1-1, for the attributes a CT, SEG or SR-like object carries):

* Basic Profile actions by attribute (remove / empty / dummy / replace UID), applied at every nesting
  level; PN values not otherwise listed are emptied, AE titles, telephone numbers and person
  identification sequences are removed.
* All private elements, curves (50xx) and overlays (60xx), group lengths, and public elements unknown
  to pydicom's dictionary (we cannot tell what they hold) are removed.
* UIDs: every UI value that is not a well-known registry UID (pydicom's UID dictionary) and not in a
  class-UID attribute (SOP Class, Transfer Syntax, ...) becomes ``2.25.<int>``, keyed on the original
  UID alone, so references between objects (SEG → CT, ReferencedSOPInstanceUID in sequences, shared
  Frame of Reference) stay consistent across files and imports.
* Retain Longitudinal Temporal Information, Modified Dates Option (113107, default on): every DA
  value, and the date part of every DT value, is shifted by the patient's fixed number of days.
  TM values and the time part of DT are kept: with dates moved, time of day alone does not identify
  anyone, and keeping it preserves the order of series within a day. PatientBirthDate is shifted by
  the same amount, which keeps age at every study exact.
* Retain Patient Characteristics Option (113108, default on): PatientAge, PatientSex, PatientSize,
  PatientWeight and SmokingStatus are kept. ILD reading needs them (lung volume and PFT reference
  values depend on age, sex and height; smoking history matters to the differential). We keep this
  subset rather than everything the option allows (no ethnic group, pregnancy status...).
* Descriptors (StudyDescription, SeriesDescription, ProtocolName...) are removed unless
  ``keep_descriptors=True``; then they are kept unchanged (not cleaned), which the operator vouches
  for, and the Clean Descriptors code (113105) is NOT claimed.
* Clinical-trial attributes (group 0012) are removed, except that earlier de-identification records
  (DeidentificationMethod and its code sequence) are kept and ours is appended.

What is NOT done: pixel data is untouched. Burned-in text (secondary captures, dose screens, some
scout views) and recognisable facial features in head CT are not detected or cleaned; the result
carries a warning when the header says they may be present (BurnedInAnnotation / Recognizable
VisualFeatures = YES, or a secondary-capture SOP class), so the caller can quarantine such objects.

Derivations are versioned (``METHOD_VERSION``); changing any of them would split every existing
patient into a new pseudonym, so they must not change without a migration of the key table.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

from pydicom import config

# The registry pydicom.uid re-exports (without declaring it); imported from where it is defined.
from pydicom._uid_dict import UID_dictionary
from pydicom.charset import default_encoding
from pydicom.datadict import get_entry, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from studies.raw_elements import (
    UNDEFINED_LENGTH,
    dictionary_vr,
    plain_charset,
    raw_is_canonical,
)

__all__ = [
    "METHOD_VERSION",
    "DeidentificationError",
    "DeidentificationKey",
    "DeidentificationResult",
    "Deidentifier",
    "is_well_known_uid",
]

METHOD_VERSION: Final = "ild-review-deid-1"
"""Recorded in every output; bump only together with a migration of stored keys (see module doc)."""

PseudonymSource = Literal["PatientID", "StudyInstanceUID", "PatientName"]

# PatientIDs that public or already-anonymised data uses as placeholders. Treating them as real IDs
# would merge unrelated people into one pseudonymous patient, which is worse than splitting one
# person across studies, so they count as "no PatientID" (compared case-insensitively).
DEFAULT_PLACEHOLDER_PATIENT_IDS: Final = frozenset(
    {"", "0", "-", "NA", "N/A", "NONE", "NULL", "UNKNOWN", "ANON", "ANONYMOUS", "ANONYMIZED"}
    | {"ANONYMISED", "DEIDENTIFIED", "DE-IDENTIFIED", "REMOVED", "PATIENT", "NOID", "NO ID"}
)

_DUMMY_TEXT: Final = "DEIDENTIFIED"

_DCM_CODES: Final = {
    "113100": "Basic Application Confidentiality Profile",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
}


class DeidentificationError(ValueError):
    """The dataset cannot be de-identified safely (e.g. nothing to derive a stable pseudonym from)."""


class _Action(Enum):
    """What to do with one attribute; the letters follow PS3.15 Table E.1-1."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    PSEUDONYM = "pseudonym"  # PatientName / PatientID at the top level; emptied when nested
    HASH = "hash"  # AccessionNumber: keyed hash, so the key holder can match RIS orders
    KEEP = "K"  # listed to document a deliberate keep; the generic VR rules still apply


# --- The table. Keywords, so it reads like the standard; resolved to tags (and checked) at import.
_REMOVE_KEYWORDS: Final = """
    AcquisitionComments AcquisitionContextSequence ActualHumanPerformersSequence
    AdditionalPatientHistory AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence
    AdmittingDiagnosesDescription AdmittingTime Allergies Arbitrary AsserterIdentificationSequence
    AuthorIdentificationSequence AuthorObserverSequence BranchOfService CassetteID
    CommentsOnThePerformedProcedureStep ConfidentialityConstraintOnPatientDataDescription
    ConsultingPhysicianIdentificationSequence ConsultingPhysicianName
    ContentCreatorIdentificationCodeSequence ContentSequence ContributionDescription
    CountryOfResidence CurrentPatientLocation CustodialOrganizationSequence DataSetTrailingPadding
    DetectorID DigitalSignaturesSequence DischargeDiagnosisDescription DistributionAddress
    DistributionName EncryptedAttributesSequence EthnicGroup FrameComments GantryID GeneratorID
    GraphicAnnotationSequence GroupOfPatientsIdentificationSequence HumanPerformerName
    HumanPerformerOrganization IconImageSequence IdentifyingComments ImageComments
    ImagePresentationComments ImagingServiceRequestComments Impressions InstitutionAddress
    InstitutionCodeSequence InstitutionName InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification
    IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
    InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer
    InterpretationRecorder InterpretationText InterpretationTranscriber IssuerOfAccessionNumberSequence
    IssuerOfAdmissionID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence
    IssuerOfServiceEpisodeID LastMenstrualDate MAC MedicalAlerts MedicalRecordLocator MilitaryRank
    ModifiedAttributesSequence ModifiedImageDescription ModifyingDeviceID ModifyingDeviceManufacturer
    NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults Occupation
    OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderEnteredBy
    OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence
    OtherPatientNames ParticipantSequence PatientAddress PatientBirthDateInAlternativeCalendar
    PatientBirthName PatientBirthTime PatientComments PatientDeathDateInAlternativeCalendar
    PatientAlternativeCalendar PatientInstitutionResidence PatientInsurancePlanCodeSequence
    PatientMotherBirthName PatientPrimaryLanguageCodeSequence
    PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference PatientSexNeutered
    PatientState PatientTelephoneNumbers PatientTransportArrangements PerformedLocation
    PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID
    PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedStationAETitle PerformedStationGeographicLocationCodeSequence PerformedStationName
    PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
    PerformingPhysicianName PersonAddress PersonIdentificationCodeSequence PersonTelephoneNumbers
    PhysicianApprovingInterpretation PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    PhysiciansReadingStudyIdentificationSequence PlateID PreMedication PregnancyStatus
    ReasonForStudy ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence
    ReasonForTheImagingServiceRequest ReasonForRequestedProcedureCodeSequence
    ReasonForPerformedProcedureCodeSequence ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence
    ReferencedPatientPhotoSequence ReferencedPatientSequence ReferencedPerformedProcedureStepSequence
    ReferencedSOPInstanceMACSequence ReferringPhysicianAddress
    ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers RegionOfResidence
    RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
    RequestedProcedureID RequestedProcedureLocation RequestingPhysician
    RequestingPhysicianIdentificationSequence RequestingService ResponsibleOrganization
    ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsIDIssuer
    RetrieveAETitle ReviewerName ScheduledHumanPerformersSequence
    ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
    ScheduledPerformingPhysicianName ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
    ScheduledProcedureStepID ScheduledProcedureStepLocation ScheduledProcedureStepStartDate
    ScheduledProcedureStepStartTime ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
    ScheduledStationName ScheduledStationNameCodeSequence ServiceEpisodeDescription ServiceEpisodeID
    SourcePatientGroupIdentificationSequence SpecialNeeds StationAETitle StationName StudyComments
    StudyIDIssuer TextComments TextString TimezoneOffsetFromUTC TopicAuthor TopicKeywords
    TopicSubject TopicTitle VerifyingOrganization VisitComments
"""

_EMPTY_KEYWORDS: Final = """
    ContentCreatorName FillerOrderNumberImagingServiceRequest
    PlacerOrderNumberImagingServiceRequest ReferringPhysicianName StudyID
    VerifyingObserverIdentificationCodeSequence
"""

# Type 1 somewhere (DeviceSerialNumber in the Enhanced General Equipment module of SEG/enhanced CT,
# observer names in SR): emptying would make the object invalid, so a fixed dummy replaces them.
_DUMMY_KEYWORDS: Final = "DeviceSerialNumber PersonName VerifyingObserverName"

# Removed unless keep_descriptors (fallback EMPTY where the attribute is Type 2).
_DESCRIPTORS: Final = {
    "StudyDescription": _Action.REMOVE,
    "SeriesDescription": _Action.REMOVE,
    "ProtocolName": _Action.REMOVE,
    "AcquisitionDeviceProcessingDescription": _Action.REMOVE,
    "AcquisitionProtocolName": _Action.REMOVE,
    "PerformedProcedureStepDescription": _Action.REMOVE,
    "RequestedProcedureDescription": _Action.REMOVE,
    "ScheduledProcedureStepDescription": _Action.REMOVE,
    "DerivationDescription": _Action.REMOVE,
    "ContrastBolusAgent": _Action.EMPTY,
}

# Kept under retain_patient_characteristics, else the Basic Profile action.
_PATIENT_CHARACTERISTICS: Final = {
    "PatientAge": _Action.REMOVE,
    "PatientSex": _Action.EMPTY,
    "PatientSize": _Action.REMOVE,
    "PatientWeight": _Action.REMOVE,
    "SmokingStatus": _Action.REMOVE,
}

# UI attributes whose values name a class, syntax or scheme, never an instance: never remapped,
# even when the value is a vendor's private UID that the registry does not know.
_CLASS_UID_KEYWORDS: Final = """
    SOPClassUID MediaStorageSOPClassUID ReferencedSOPClassUID ReferencedSOPClassUIDInFile
    TransferSyntaxUID ReferencedTransferSyntaxUIDInFile ImplementationClassUID AffectedSOPClassUID
    RequestedSOPClassUID CodingSchemeUID RelatedGeneralSOPClassUID OriginalSpecializedSOPClassUID
    SOPClassesInStudy MappingResourceUID
"""

# File meta attributes that identify the sending or receiving node.
_META_REMOVE_KEYWORDS: Final = """
    SourceApplicationEntityTitle SendingApplicationEntityTitle ReceivingApplicationEntityTitle
    SourcePresentationAddress SendingPresentationAddress ReceivingPresentationAddress
    PrivateInformationCreatorUID PrivateInformation
"""


def _tags(keywords: Iterable[str]) -> frozenset[BaseTag]:
    """Resolve keywords to tags, failing at import on a typo (a silent miss would leak data)."""
    out = set()
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise RuntimeError(f"de-identification table names unknown DICOM keyword {kw!r}")
        out.add(BaseTag(tag))
    return frozenset(out)


def _words(block: str) -> list[str]:
    return block.split()


def _tag(keyword: str) -> BaseTag:
    return next(iter(_tags([keyword])))


_BASE_ACTIONS: Final[dict[BaseTag, _Action]] = {
    **dict.fromkeys(_tags(_words(_REMOVE_KEYWORDS)), _Action.REMOVE),
    **dict.fromkeys(_tags(_words(_EMPTY_KEYWORDS)), _Action.EMPTY),
    **dict.fromkeys(_tags(_words(_DUMMY_KEYWORDS)), _Action.DUMMY),
    **dict.fromkeys(_tags(["PatientName", "PatientID"]), _Action.PSEUDONYM),
    **dict.fromkeys(_tags(["AccessionNumber"]), _Action.HASH),
}
_CLASS_UID_TAGS: Final = _tags(_words(_CLASS_UID_KEYWORDS))
_META_REMOVE_TAGS: Final = _tags(_words(_META_REMOVE_KEYWORDS))

_SECONDARY_CAPTURE_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.7"

_DA_RE: Final = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DA_ACR_NEMA_RE: Final = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")
_DT_RE: Final = re.compile(r"(\d{4})(\d{2})?(\d{2})?([\d.]*(?:[+-]\d{4})?)")


def is_well_known_uid(uid: str) -> bool:
    """True for UIDs in the DICOM registry (SOP classes, transfer syntaxes, well-known frames...).

    These are shared by everyone and identify nothing, and remapping them would break readers.
    """
    return _normalise_uid(uid) in UID_dictionary


@dataclass(frozen=True)
class DeidentificationKey:
    """What links the pseudonymous object back to the person: store it admin-only, never show it."""

    method_version: str
    pseudonym: str
    pseudonym_source: PseudonymSource
    date_shift_days: int
    original_patient_id: str
    original_patient_name: str
    original_patient_birth_date: str
    original_accession_number: str
    original_study_instance_uid: str
    study_instance_uid: str
    original_series_instance_uid: str
    series_instance_uid: str
    original_sop_instance_uid: str
    sop_instance_uid: str
    uid_map: dict[str, str] = field(default_factory=dict)
    """Every UID remapped in this object, original → new (includes the three above)."""


@dataclass(frozen=True)
class DeidentificationResult:
    """The de-identified copy, its key record, and header hints the profile cannot act on."""

    dataset: Dataset
    key: DeidentificationKey
    warnings: tuple[str, ...] = ()


@dataclass
class _Walk:
    """Per-object state while walking one dataset tree."""

    pseudonym: str
    shift_days: int
    uid_map: dict[str, str] = field(default_factory=dict)


class Deidentifier:
    """Apply the profile with a site secret; deterministic and stateless, safe to share.

    Example: ``Deidentifier(secret).apply(pydicom.dcmread(path)).dataset``.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        retain_longitudinal_temporal_information_with_modified_dates: bool = True,
        keep_descriptors: bool = False,
        retain_patient_characteristics: bool = True,
        hash_accession_number: bool = True,
        pseudonym_prefix: str = "ILD",
        date_shift_range_days: tuple[int, int] = (-730, -30),
        placeholder_patient_ids: Iterable[str] = DEFAULT_PLACEHOLDER_PATIENT_IDS,
    ) -> None:
        """Check options up front; raises ``ValueError`` naming the bad one.

        ``secret`` must be at least 16 bytes: everything pseudonymous is only as private as it.
        ``date_shift_range_days`` is inclusive and must exclude 0, or some patients keep real dates.
        """
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        low, high = date_shift_range_days
        if low > high or low <= 0 <= high:
            raise ValueError(
                f"date_shift_range_days {date_shift_range_days} must be ordered and exclude 0"
            )
        if not re.fullmatch(r"[A-Z0-9]{1,8}", pseudonym_prefix):
            raise ValueError(f"pseudonym_prefix {pseudonym_prefix!r} must be 1-8 of A-Z, 0-9")
        self._secret = bytes(secret)
        self._modified_dates = retain_longitudinal_temporal_information_with_modified_dates
        self._keep_descriptors = keep_descriptors
        self._retain_characteristics = retain_patient_characteristics
        self._hash_accession = hash_accession_number
        self._prefix = pseudonym_prefix
        self._shift_range = (low, high)
        self._placeholders = frozenset(p.strip().upper() for p in placeholder_patient_ids)
        self._actions = self._resolve_actions()

    # --- Derivations (public so the app can, e.g., find a patient's pseudonym without a file).

    def pseudonym(
        self,
        original_patient_id: str,
        original_patient_name: str = "",
        *,
        study_instance_uid: str = "",
    ) -> str:
        """Readable stable pseudonym, e.g. ``"ILD-7F3A9C21B04E"`` (48 bits of HMAC-SHA256).

        Derived from PatientID; when that is empty or a placeholder ("ANONYMOUS", "0"...), from
        StudyInstanceUID, so the study still gets one stable pseudonym across re-imports (but a
        follow-up study cannot be linked: that needs a real ID). The name is the last resort only,
        because placeholder names would merge strangers. Raises ``DeidentificationError`` when all
        three are empty. 48 bits keeps the chance of two patients colliding below 1 in 10^5 even
        for 5 000 patients.
        """
        source, key = self._patient_key(
            original_patient_id, original_patient_name, study_instance_uid
        )
        digest = self._digest("pseudonym", f"{source}:{key}")
        return f"{self._prefix}-{digest.hex()[:12].upper()}"

    def pseudonym_source(
        self,
        original_patient_id: str,
        original_patient_name: str = "",
        *,
        study_instance_uid: str = "",
    ) -> PseudonymSource:
        """Which attribute the pseudonym came from; worth showing when it is not PatientID."""
        return self._patient_key(original_patient_id, original_patient_name, study_instance_uid)[0]

    def date_shift_days(
        self,
        original_patient_id: str,
        original_patient_name: str = "",
        *,
        study_instance_uid: str = "",
    ) -> int:
        """Days added to every date of this patient, within ``date_shift_range_days`` (negative).

        Keyed on the same value as the pseudonym, so one pseudonymous patient has one shift.
        """
        source, key = self._patient_key(
            original_patient_id, original_patient_name, study_instance_uid
        )
        low, high = self._shift_range
        draw = int.from_bytes(self._digest("date-shift", f"{source}:{key}")[:8], "big")
        return low + draw % (high - low + 1)

    def remap_uid(self, uid: str) -> str:
        """``2.25.<int>`` from the HMAC of ``uid`` (at most 44 characters), or ``""`` for ``""``.

        The integer is a UUID (version 8, RFC 9562 variant) as ISO/IEC 9834-8 expects under 2.25.
        It depends on the UID alone, not on the patient, so references between objects agree even
        if their headers disagree about the patient. This does not consult the registry: the
        caller decides what to remap (``apply`` skips class UIDs and well-known UIDs).
        """
        original = _normalise_uid(uid)
        if not original:
            return ""
        value = int.from_bytes(self._digest("uid", original)[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)
        value = (value & ~(0x3 << 62)) | (0x2 << 62)
        return f"2.25.{value}"

    def accession_hash(self, accession_number: str) -> str:
        """16 hex characters (fits SH) standing for an accession number; ``""`` stays ``""``."""
        value = _text(accession_number)
        return self._digest("accession", value).hex()[:16].upper() if value else ""

    # --- The profile.

    def apply(self, ds: Dataset, *, in_place: bool = False) -> DeidentificationResult:
        """De-identify a copy of ``ds`` (the caller's dataset is never modified), or ``ds``
        itself with ``in_place=True`` when the caller has no further use for the original
        (ingest: the copy costs as much as the profile itself).

        Raises ``DeidentificationError`` when PatientID, StudyInstanceUID and PatientName are all
        empty (no stable pseudonym possible). Pixel data is copied unchanged.
        """
        patient_id = _text(ds.get("PatientID", ""))
        patient_name = _text(ds.get("PatientName", ""))
        study_uid = _normalise_uid(_text(ds.get("StudyInstanceUID", "")))
        source = self.pseudonym_source(patient_id, patient_name, study_instance_uid=study_uid)
        walk = _Walk(
            pseudonym=self.pseudonym(patient_id, patient_name, study_instance_uid=study_uid),
            shift_days=self.date_shift_days(patient_id, patient_name, study_instance_uid=study_uid),
        )
        previous_methods = _values(ds.get("DeidentificationMethod", ""))
        previous_codes = [
            copy.deepcopy(item) for item in ds.get("DeidentificationMethodCodeSequence", [])
        ]

        series_uid = _normalise_uid(_text(ds.get("SeriesInstanceUID", "")))
        sop_uid = _normalise_uid(_text(ds.get("SOPInstanceUID", "")))
        original_birth_date = _text(ds.get("PatientBirthDate", ""))
        original_accession = _text(ds.get("AccessionNumber", ""))
        warnings = _pixel_warnings(ds)

        out = ds if in_place else copy.deepcopy(ds)
        self._clean(out, walk, depth=0)
        out.PatientName = walk.pseudonym
        out.PatientID = walk.pseudonym
        self._stamp(out, previous_methods, previous_codes)
        self._clean_file_meta(out, walk)

        key = DeidentificationKey(
            method_version=METHOD_VERSION,
            pseudonym=walk.pseudonym,
            pseudonym_source=source,
            date_shift_days=walk.shift_days,
            original_patient_id=patient_id,
            original_patient_name=patient_name,
            original_patient_birth_date=original_birth_date,
            original_accession_number=original_accession,
            original_study_instance_uid=study_uid,
            study_instance_uid=walk.uid_map.get(study_uid, ""),
            original_series_instance_uid=series_uid,
            series_instance_uid=walk.uid_map.get(series_uid, ""),
            original_sop_instance_uid=sop_uid,
            sop_instance_uid=walk.uid_map.get(sop_uid, ""),
            uid_map=dict(walk.uid_map),
        )
        return DeidentificationResult(dataset=out, key=key, warnings=warnings)

    # --- Internals.

    def _digest(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 with the purpose in the message, so the derivations are independent."""
        message = f"ild-review/{purpose}/v1\x00{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _patient_key(
        self, patient_id: str, patient_name: str, study_instance_uid: str
    ) -> tuple[PseudonymSource, str]:
        pid = _text(patient_id)
        if pid and pid.upper() not in self._placeholders:
            return "PatientID", pid
        study = _normalise_uid(study_instance_uid)
        if study:
            return "StudyInstanceUID", study
        name = _text(patient_name)
        if name and name.upper() not in self._placeholders:
            return "PatientName", name
        raise DeidentificationError(
            "cannot derive a stable pseudonym: PatientID, StudyInstanceUID and PatientName are all "
            "empty or placeholders"
        )

    def _resolve_actions(self) -> dict[BaseTag, _Action]:
        actions = dict(_BASE_ACTIONS)
        for keyword, fallback in _DESCRIPTORS.items():
            actions[_tag(keyword)] = _Action.KEEP if self._keep_descriptors else fallback
        for keyword, fallback in _PATIENT_CHARACTERISTICS.items():
            actions[_tag(keyword)] = _Action.KEEP if self._retain_characteristics else fallback
        return actions

    def _clean(self, ds: Dataset, walk: _Walk, *, depth: int) -> None:
        """Apply the table to every element of ``ds``, recursing into sequences."""
        plain_text = plain_charset(ds)
        elements = ds._dict
        for tag in list(elements):
            tag = BaseTag(tag)
            removed, dictionary_vr = _tag_plan(int(tag))
            action = self._actions.get(tag)
            if removed or (
                action is _Action.REMOVE and _converts_quietly(elements[tag], dictionary_vr)
            ):
                del ds[tag]
                continue
            if action is not _Action.REMOVE and action is not _Action.PSEUDONYM:
                # Left as read (not converted) when no rule below would change it and
                # converting and writing it again gives back the same bytes.
                raw = elements[tag]
                if isinstance(raw, RawDataElement):
                    if self._kept_as_read(raw, action, dictionary_vr, plain_text):
                        continue
                    if action is None or action is _Action.KEEP:
                        changed = self._changed_from_raw(raw, dictionary_vr, walk)
                        if changed is not None:
                            elements[tag] = changed
                            continue
            elem = ds[tag]
            if action is _Action.REMOVE:
                del ds[tag]
            elif action is _Action.EMPTY:
                elem.value = elem.empty_value
            elif action is _Action.DUMMY:
                if elem.VR == "SQ":
                    del ds[tag]
                elif not _is_empty(elem):
                    elem.value = _DUMMY_TEXT
            elif action is _Action.PSEUDONYM:
                elem.value = walk.pseudonym if depth == 0 else elem.empty_value
            elif action is _Action.HASH:
                original = _text(elem.value)
                elem.value = self.accession_hash(original) if self._hash_accession else ""
            else:
                self._by_vr(ds, elem, walk, depth=depth)

    def _kept_as_read(
        self, raw: RawDataElement, action: _Action | None, dictionary_vr: str, plain_text: bool
    ) -> bool:
        """True when the rules keep ``raw`` unchanged and its bytes are canonical."""
        vr = dictionary_vr if raw.VR is None else raw.VR
        if vr == "SQ" or vr == "UN":
            return False
        if not raw.length and not raw.value:
            return True  # empty stays empty (emptied, dummy only if not empty, hash of "")
        if action is not None and action is not _Action.KEEP:
            return False
        if vr == "TM" and not self._modified_dates:
            return False
        if vr == "UI" and raw.tag not in _CLASS_UID_TAGS:
            return False  # remapped
        return raw_is_canonical(raw, vr, plain_text)

    def _changed_from_raw(
        self, raw: RawDataElement, dictionary_vr: str, walk: _Walk
    ) -> DataElement | None:
        """What ``_by_vr`` makes of a UI or DA element, read from its bytes as pydicom reads
        them (``convert_UI``, ``convert_string``) without the cost of converting; None for
        anything else."""
        vr = dictionary_vr if raw.VR is None else raw.VR
        value = raw.value
        if (
            (vr != "UI" and (vr != "DA" or not self._modified_dates))
            or not isinstance(value, bytes)
            or raw.length == UNDEFINED_LENGTH
            or config.datetime_conversion
        ):
            return None
        if vr == "UI":
            if raw.tag in _CLASS_UID_TAGS:
                return None
            read = _multi_string(value.decode(default_encoding).rstrip("\0 "))
            new = self._remap_values(read, walk)
        else:
            read = _multi_string(value.decode(default_encoding))
            shifted = _shift_values(read, vr, walk.shift_days)
            new = empty_value_for_VR(vr) if shifted is None else shifted
        return DataElement(raw.tag, vr, new, raw.value_tell)

    def _by_vr(self, ds: Dataset, elem: DataElement, walk: _Walk, *, depth: int) -> None:
        """Generic rules for attributes the table does not name (or names as KEEP)."""
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._clean(item, walk, depth=depth + 1)
        elif vr == "PN":
            elem.value = elem.empty_value
        elif vr in ("DA", "DT"):
            if not self._modified_dates:
                elem.value = elem.empty_value
            else:
                shifted = _shift_values(elem.value, vr, walk.shift_days)
                elem.value = elem.empty_value if shifted is None else shifted
        elif vr == "TM":
            if not self._modified_dates:
                elem.value = elem.empty_value
        elif vr == "UI" and elem.tag not in _CLASS_UID_TAGS:
            elem.value = self._remap_values(elem.value, walk)

    def _remap_values(self, value: Any, walk: _Walk) -> Any:
        if value is None:
            return value
        originals = list(value) if isinstance(value, MultiValue | list) else [value]
        new = []
        for original in originals:
            uid = _normalise_uid(str(original))
            if not uid or uid in UID_dictionary:
                new.append(uid)
                continue
            mapped = walk.uid_map.get(uid)
            if mapped is None:
                mapped = walk.uid_map[uid] = self.remap_uid(uid)
            new.append(mapped)
        return new if isinstance(value, MultiValue | list) else new[0]

    def _stamp(self, out: Dataset, previous_methods: list[str], previous_codes: list[Any]) -> None:
        """Record what was done, as Annex E asks, keeping earlier de-identification records."""
        codes = ["113100"]
        methods = [f"{METHOD_VERSION}: PS3.15 E.1 Basic Profile"]
        if self._modified_dates:
            codes.append("113107")
            methods.append("Retain Longitudinal Temporal Information Modified Dates")
        if self._retain_characteristics:
            codes.append("113108")
            methods.append("Retain Patient Characteristics (age sex size weight smoking)")
        if self._keep_descriptors:
            methods.append("Descriptors kept unchanged (not cleaned)")
        methods.append("Pixel data not checked for burned-in text")
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = [m for m in previous_methods if m not in methods] + methods
        seen = {
            (item.get("CodeValue"), item.get("CodingSchemeDesignator")) for item in previous_codes
        }
        items = list(previous_codes)
        for code in codes:
            if (code, "DCM") in seen:
                continue
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = _DCM_CODES[code]
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)
        out.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self._modified_dates else "REMOVED"
        )

    def _clean_file_meta(self, out: Dataset, walk: _Walk) -> None:
        """Drop node identities from the file meta and keep it in step with the new SOP UID."""
        meta = getattr(out, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta.keys()):
            if BaseTag(tag) in _META_REMOVE_TAGS:
                del meta[tag]
        if "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self._remap_values(
                meta.MediaStorageSOPInstanceUID, walk
            )


@functools.lru_cache(maxsize=4096)
def _tag_plan(tag: int) -> tuple[bool, str]:
    """``_always_removed(tag)`` and, when kept, the tag's dictionary VR (memoised per tag)."""
    if _always_removed(BaseTag(tag)):
        return True, ""
    return False, dictionary_vr(tag)


def _always_removed(tag: BaseTag) -> bool:
    """Elements removed whatever the table says: private, curves, overlays, unknown, trial, lengths."""
    group = tag.group
    if tag.is_private:
        return True
    if group % 2 == 0 and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E):
        return True
    if tag.element == 0 and group != 0x0002:
        return True  # group lengths go stale once anything is removed
    if group == 0x0012:
        return True  # clinical-trial identifiers; our own records are written afterwards
    try:
        get_entry(tag)
    except KeyError:
        return True
    return False


def _pixel_warnings(ds: Dataset) -> tuple[str, ...]:
    warnings = []
    if _text(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        warnings.append("BurnedInAnnotation is YES: pixel data may show identifying text")
    if _text(ds.get("RecognizableVisualFeatures", "")).upper() == "YES":
        warnings.append("RecognizableVisualFeatures is YES: pixel data may show a face")
    sop_class = _normalise_uid(_text(ds.get("SOPClassUID", "")))
    if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
        warnings.append("secondary capture: pixel data often carries burned-in text")
    return tuple(warnings)


def _shift_values(value: Any, vr: str, days: int) -> Any:
    """Shift a DA/DT value (single or multi); ``None`` when any part cannot be parsed.

    Unparseable dates are emptied by the caller rather than kept: a date we cannot shift is a
    real date.
    """
    if value is None:
        return value
    many = isinstance(value, MultiValue | list)
    originals = [str(v) for v in value] if many else [str(value)]
    shifted = []
    for original in originals:
        new = _shift_da(original, days) if vr == "DA" else _shift_dt(original, days)
        if new is None:
            return None
        shifted.append(new)
    return shifted if many else shifted[0]


def _shift_da(value: str, days: int) -> str | None:
    text = value.strip()
    if not text:
        return ""
    match = _DA_RE.fullmatch(text) or _DA_ACR_NEMA_RE.fullmatch(text)
    if match is None:
        return None
    try:
        day = dt.date(*map(int, match.groups())) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT; keep time, fraction and UTC offset as written.

    A DT with only a year (or year and month) is shifted from the first day of that period and
    written back at the same precision, so order is kept approximately and nothing finer leaks.
    """
    text = value.strip()
    if not text:
        return ""
    match = _DT_RE.fullmatch(text)
    if match is None:
        return None
    year, month, day, rest = match.groups()
    if (month is None or day is None) and rest and not rest.startswith(("+", "-")):
        return None
    try:
        moved = dt.date(int(year), int(month or 1), int(day or 1)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    out = f"{moved.year:04d}"
    if month is not None:
        out += f"{moved.month:02d}"
    if day is not None:
        out += f"{moved.day:02d}"
    return out + rest


def _normalise_uid(uid: str) -> str:
    """UIDs as compared and hashed: no padding, no trailing NUL."""
    return str(uid).strip().rstrip("\x00").strip()


def _text(value: Any) -> str:
    """An element value as a plain stripped string ("" for None); multi-values joined with ``\\``."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value if str(v)]
    return [str(value)]


def _is_empty(elem: DataElement) -> bool:
    return elem.value is None or elem.value == "" or elem.value == []


# --- Elements left as read. A RawDataElement whose VR the generic rules leave alone is kept
# unconverted when converting it (as ``ds[tag]`` does) and writing it again would give back the
# same value bytes (``studies.raw_elements``): then the stored file cannot tell, and the
# conversion (most of the cost of de-identification) is saved. Anything else is converted as
# before.

# Text that pydicom decodes with a warning at worst, never an error (unlike DS, IS, SQ...).
_QUIET_TEXT_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


def _multi_string(text: str) -> str | list[str]:
    """``pydicom.values.multi_string``: one value, or a list of them."""
    items = text.rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else items


def _converts_quietly(element: Any, dictionary_vr: str) -> bool:
    """Whether ``ds[tag]`` cannot fail on ``element``: converted already, empty, or text."""
    if not isinstance(element, RawDataElement) or not element.length:
        return True
    vr = dictionary_vr if element.VR is None else element.VR
    return vr in _QUIET_TEXT_VRS and element.length != UNDEFINED_LENGTH
