"""DICOMweb HTTP views. Each parses the request, calls one function of qido / wado / render /
stow, and writes the response; what is found, and for whom, is decided below them.

Authentication is DRF's session (the same-origin viewer), token, and HTTP Basic (what a PACS
such as Orthanc can be configured with for a DICOMweb peer). Content negotiation is done here
by hand, per resource, because DICOMweb's Accept values (multipart/related with type and
transfer-syntax parameters) are beyond DRF's renderer matching; errors are always JSON.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from core.exceptions import ApplicationError
from studies.dicomweb import qido, render, stow, wado
from studies.dicomweb.authentication import CachedTokenAuthentication
from studies.dicomweb.multipart import Read, iter_parts, new_boundary, parse_accept, type_matches
from studies.dicomweb.selectors import Scope

DICOM_JSON = "application/dicom+json"


class DicomwebView(APIView):
    # Token first: an anonymous request then gets 401 with "WWW-Authenticate: Token".
    authentication_classes = [CachedTokenAuthentication, BasicAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONRenderer]
    parser_classes: list[Any] = []

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        # DICOMweb Accept headers are negotiated per resource; DRF only renders errors.
        return JSONRenderer(), "application/json"

    def scope(self, request: Request, project_slug: str | None) -> Scope:
        root = reverse("dicomweb:root")
        if project_slug is not None:
            root += f"projects/{project_slug}/"
        return Scope(request.user, project_slug, request.build_absolute_uri(root).rstrip("/"))


def require_json_accept(request: Request) -> None:
    for choice in parse_accept(request.headers.get("Accept")):
        if choice.is_multipart:
            continue
        if any(type_matches(choice.media_type, t) for t in (DICOM_JSON, "application/json")):
            return
    raise wado.not_acceptable("this resource is application/dicom+json")


def json_response(
    body: bytes, warnings: list[str] | None = None, status: int = 200
) -> HttpResponse:
    response = HttpResponse(body, content_type=DICOM_JSON, status=status)
    if warnings:
        # RFC 7234 Warning, as PS3.18 8.6.1.2 uses for ignored matching keys and coercions.
        response["Warning"] = ", ".join(
            f'299 ild-review "{w.replace(chr(34), chr(39))}"' for w in warnings[:20]
        )
    return response


def query_items(request: Request) -> list[tuple[str, list[str]]]:
    return [(key, request.query_params.getlist(key)) for key in request.query_params]


class RootView(DicomwebView):
    def get(self, request: Request, project_slug: str | None = None) -> HttpResponse:
        scope = self.scope(request, project_slug)
        return HttpResponse(
            f'{{"studies":"{scope.base_url}/studies"}}', content_type="application/json"
        )


class StudiesView(DicomwebView):
    """GET: search studies (QIDO-RS). POST: store instances (STOW-RS)."""

    def get(self, request: Request, project_slug: str | None = None) -> HttpResponse:
        require_json_accept(request)
        query = qido.parse_query("study", query_items(request))
        result = qido.search_studies(self.scope(request, project_slug), query)
        return json_response(result.to_json(), result.warnings)

    def post(self, request: Request, project_slug: str | None = None) -> HttpResponse:
        return store_response(request, self.scope(request, project_slug), None)


class StudyView(DicomwebView):
    """GET: retrieve the study's instances. POST: store instances of this study."""

    def get(
        self, request: Request, study: str, project_slug: str | None = None
    ) -> StreamingHttpResponse:
        return retrieve_response(request, self.scope(request, project_slug), study)

    def post(self, request: Request, study: str, project_slug: str | None = None) -> HttpResponse:
        return store_response(request, self.scope(request, project_slug), study)


class SeriesSearchView(DicomwebView):
    def get(
        self, request: Request, study: str | None = None, project_slug: str | None = None
    ) -> HttpResponse:
        require_json_accept(request)
        query = qido.parse_query("series", query_items(request))
        result = qido.search_series(self.scope(request, project_slug), query, study)
        return json_response(result.to_json(), result.warnings)


class InstancesSearchView(DicomwebView):
    def get(
        self,
        request: Request,
        study: str | None = None,
        series: str | None = None,
        project_slug: str | None = None,
    ) -> HttpResponse:
        require_json_accept(request)
        query = qido.parse_query("instance", query_items(request))
        result = qido.search_instances(self.scope(request, project_slug), query, study, series)
        return json_response(result.to_json(), result.warnings)


class RetrieveView(DicomwebView):
    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        project_slug: str | None = None,
    ) -> StreamingHttpResponse:
        return retrieve_response(
            request, self.scope(request, project_slug), study, series, instance
        )


class MetadataView(DicomwebView):
    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        project_slug: str | None = None,
    ) -> HttpResponse:
        require_json_accept(request)
        body = wado.metadata(self.scope(request, project_slug), study, series, instance)
        return json_response(body)


class FramesView(DicomwebView):
    def get(
        self,
        request: Request,
        study: str,
        series: str,
        instance: str,
        frames: str,
        project_slug: str | None = None,
    ) -> HttpResponse:
        ref = wado.frame_ref(self.scope(request, project_slug), study, series, instance)
        numbers = wado.parse_frame_numbers(frames, ref.number_of_frames)
        plan = wado.plan_frames(
            parse_accept(request.headers.get("Accept")), ref.transfer_syntax_uid
        )
        content_type, body = wado.frames_body(ref, numbers, plan)
        return HttpResponse(body, content_type=content_type)


class BulkdataView(DicomwebView):
    def get(
        self,
        request: Request,
        study: str,
        series: str,
        instance: str,
        tag: str,
        project_slug: str | None = None,
    ) -> HttpResponse:
        accept = parse_accept(request.headers.get("Accept"))
        plan, values = wado.bulkdata(
            self.scope(request, project_slug), study, series, instance, tag, accept
        )
        boundary = new_boundary()
        part_type = f"{plan.part_type}; transfer-syntax={plan.transfer_syntax}"
        from studies.dicomweb.multipart import encode_parts, part_header

        body = encode_parts(boundary, [(part_header(part_type), v) for v in values])
        return HttpResponse(
            body,
            content_type=f'multipart/related; type="{plan.part_type}"; boundary={boundary}',
        )


class RenderedView(DicomwebView):
    thumbnail = False

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
        project_slug: str | None = None,
    ) -> HttpResponse:
        params = render.parse_params(
            request.query_params.dict(), request.headers.get("Accept"), self.thumbnail
        )
        frame = None
        if frames is not None:
            if not frames.isdigit():
                raise ApplicationError("rendered frames take one frame number")
            frame = int(frames)
        body = render.render(
            self.scope(request, project_slug), params, study, series, instance, frame
        )
        return HttpResponse(body, content_type=params.media_type)


class ThumbnailView(RenderedView):
    thumbnail = True


def retrieve_response(
    request: Request,
    scope: Scope,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> StreamingHttpResponse:
    plan = wado.plan_instances(parse_accept(request.headers.get("Accept")))
    rows = wado.instance_rows(scope, study, series, instance)
    wado.check_transcodable(rows, plan)
    boundary = new_boundary()
    response = StreamingHttpResponse(
        iter_parts(boundary, wado.iter_instances(rows, plan)),
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    return response


def store_response(request: Request, scope: Scope, study: str | None) -> HttpResponse:
    read = body_reader(request)
    result = stow.store(scope, request.headers.get("Content-Type", ""), read, study)
    return json_response(result.to_json(), result.warnings, status=result.status_code)


def body_reader(request: Request) -> Read:
    """``read(n)`` over the request body, refused with 413 beyond settings.MAX_UPLOAD_BYTES
    before it is read (declared length) or once that much has been read (chunked uploads)."""
    limit = int(settings.MAX_UPLOAD_BYTES)
    declared = request.headers.get("Content-Length")
    too_big = ApplicationError(
        f"upload larger than the {limit} bytes allowed (ILD_MAX_UPLOAD_BYTES)", status_code=413
    )
    http_request = request._request
    if declared:
        if int(declared) > limit:
            raise too_big
        return http_request.read  # type: ignore[no-any-return]
    # Chunked: readable only where the server de-chunks and says so (gunicorn, mod_wsgi set
    # wsgi.input_terminated); Django's development server would hand us an empty stream.
    stream = http_request.META.get("wsgi.input")
    if stream is None or not http_request.META.get("wsgi.input_terminated"):
        raise ApplicationError(
            "send a Content-Length: this server front-end cannot read chunked request bodies",
            status_code=411,
        )
    total = 0

    def read(size: int) -> bytes:
        nonlocal total
        chunk: bytes = stream.read(size)
        total += len(chunk)
        if total > limit:
            raise too_big
        return chunk

    return read
