"""The WSGI fast path for WADO-RS frames (webapp.wsgi): the bytes it serves, and that every
request it must not answer reaches Django and gets the views' response."""

from __future__ import annotations

import base64

import pydicom
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client, RequestFactory
from rest_framework.authtoken.models import Token

from studies.dicomweb import fastpath
from studies.models import Instance
from studies.services import storage
from tests.dicomweb_tests.conftest import expected_pixels, path_of, store_series

pytestmark = pytest.mark.django_db

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT = "1.2.840.10008.1.2.1"


class Spy:
    """Django's WSGI handler, counting the requests that reach it. Like the test client, it
    keeps the test's database connection open (a server closes it at the end of requests)."""

    def __init__(self) -> None:
        self.handler = WSGIHandler()
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self.handler(environ, start_response)
            body = b"".join(response)
            response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return [body]


@pytest.fixture
def app():
    fastpath.clear_caches()
    yield fastpath.FrameFastPath(Spy())
    fastpath.clear_caches()


def call(app, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    environ = RequestFactory().get(path, **headers).environ
    started: list = []

    def start_response(status, response_headers, exc_info=None):
        started.append((status, response_headers))

    body = b"".join(app(environ, start_response))
    status, response_headers = started[0]
    return int(status.split()[0]), dict(response_headers), body


def token_for(user) -> str:
    return "Token " + Token.objects.get_or_create(user=user)[0].key


def parts_of(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(part Content-Type, content) pairs, split on the announced boundary."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    chunks = body.split(b"--" + boundary)
    assert chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        assert content.endswith(b"\r\n")
        parts.append((head.decode().removeprefix("Content-Type: "), content[:-2]))
    return parts


def frame_url(series, index: int = 0, frames: str = "1") -> str:
    sops = series.instances.order_by("instance_number").values_list("sop_instance_uid", flat=True)
    return path_of(series, "instances", sops[index], "frames", frames)


def test_it_serves_the_stored_pixels_without_django(app, reader_a, series):
    status, headers, body = call(
        app, frame_url(series, 2), HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(reader_a)
    )
    assert status == 200
    assert app.app.calls == 0
    assert headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    assert int(headers["Content-Length"]) == len(body)
    ((part_type, content),) = parts_of(headers["Content-Type"], body)
    assert part_type == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert content == expected_pixels(2)


def test_its_bytes_are_the_pixel_data_pydicom_reads(app, reader_a, project):
    series = store_series(project, 2, size=64, fill=-1000)
    auth = token_for(reader_a)
    for instance in series.instances.all():
        dataset = pydicom.dcmread(storage.absolute(instance.file))
        url = path_of(series, "instances", instance.sop_instance_uid, "frames", "1")
        status, headers, body = call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=auth)
        assert status == 200
        ((_, content),) = parts_of(headers["Content-Type"], body)
        assert content == dataset.PixelData
    assert app.app.calls == 0


def test_it_answers_as_the_django_view_does(app, reader_a, series):
    auth = token_for(reader_a)
    url = frame_url(series, 1)
    status, headers, body = call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=auth)
    view = Client().get(url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=auth)
    assert status == view.status_code == 200
    assert parts_of(headers["Content-Type"], body) == parts_of(view["Content-Type"], view.content)
    for name in ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
        assert headers[name] == view[name]


def test_several_frames_come_as_several_parts_in_the_order_asked(app, reader_a, project):
    series = store_series(project, 1)
    instance = series.instances.get()
    # The stored 16x16 frame read as two 8x16 frames: the fast path only needs offset and length.
    Instance.objects.filter(pk=instance.pk).update(number_of_frames=2, rows=8, columns=16)
    status, headers, body = call(
        app,
        frame_url(series, 0, "2,1"),
        HTTP_ACCEPT=OCTET_ANY,
        HTTP_AUTHORIZATION=token_for(reader_a),
    )
    assert status == 200
    pixels = expected_pixels(0)
    assert [c for _, c in parts_of(headers["Content-Type"], body)] == [pixels[256:], pixels[:256]]
    assert app.app.calls == 0


def test_a_single_part_accept_gets_the_bare_frame(app, reader_a, series):
    status, headers, body = call(
        app,
        frame_url(series, 0),
        HTTP_ACCEPT="application/octet-stream",
        HTTP_AUTHORIZATION=token_for(reader_a),
    )
    assert status == 200
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert body == expected_pixels(0)


def test_anonymous_requests_reach_django_and_get_401(app, series):
    status, headers, _ = call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Token")
    assert app.app.calls == 1


def test_a_wrong_token_is_401(app, series):
    status, _, _ = call(
        app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION="Token not-a-token"
    )
    assert status == 401


def test_another_projects_user_gets_404_and_no_pixels(app, reader_a, outsider, series):
    url = frame_url(series)
    assert call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(reader_a))[0] == 200
    # The member's request filled the cache: the outsider must still not be served from it.
    status, _, body = call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(outsider))
    assert status == 404
    assert expected_pixels(0) not in body


def test_a_project_url_of_another_project_is_404(app, site_admin, series, other_series):
    url = frame_url(series).replace("/dicomweb/", "/dicomweb/projects/other/")
    status, _, _ = call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(site_admin))
    assert status == 404
    scoped = frame_url(series).replace("/dicomweb/", "/dicomweb/projects/ssc/")
    ok = call(app, scoped, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(site_admin))
    assert ok[0] == 200


def test_an_unknown_uid_is_404(app, reader_a, series):
    url = path_of(series, "instances", "1.2.3.4", "frames", "1")
    status, _, _ = call(app, url, HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(reader_a))
    assert status == 404
    assert app.app.calls == 1


def test_a_frame_number_beyond_the_instance_is_404(app, reader_a, series):
    status, _, _ = call(
        app,
        frame_url(series, 0, "2"),
        HTTP_ACCEPT=OCTET_ANY,
        HTTP_AUTHORIZATION=token_for(reader_a),
    )
    assert status == 404


def test_an_accept_it_cannot_satisfy_is_406(app, reader_a, series):
    status, _, _ = call(
        app,
        frame_url(series),
        HTTP_ACCEPT='multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90',
        HTTP_AUTHORIZATION=token_for(reader_a),
    )
    assert status == 406
    assert app.app.calls == 1


def test_compressed_frames_are_left_to_django(app, reader_a, rle_series):
    status, headers, body = call(
        app, frame_url(rle_series), HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=token_for(reader_a)
    )
    assert status == 200
    assert app.app.calls == 1
    ((part_type, _),) = parts_of(headers["Content-Type"], body)
    assert part_type.endswith("transfer-syntax=1.2.840.10008.1.2.5")


def test_session_and_basic_authentication_are_honoured(app, client, reader_a, series):
    client.force_login(reader_a)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    assert call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_COOKIE=cookie)[0] == 200
    basic = "Basic " + base64.b64encode(b"reader-a:pw").decode()
    assert call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=basic)[0] == 200
    wrong = "Basic " + base64.b64encode(b"reader-a:nope").decode()
    assert call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_AUTHORIZATION=wrong)[0] == 401
    assert app.app.calls == 1


def test_a_logged_out_session_is_refused_once_the_cache_is_cleared(app, client, reader_a, series):
    client.force_login(reader_a)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    assert call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_COOKIE=cookie)[0] == 200
    client.logout()
    fastpath.clear_caches()
    assert call(app, frame_url(series), HTTP_ACCEPT=OCTET_ANY, HTTP_COOKIE=cookie)[0] == 401


def test_a_disallowed_host_is_left_to_django(app, reader_a, series):
    status, _, _ = call(
        app,
        frame_url(series),
        HTTP_ACCEPT=OCTET_ANY,
        HTTP_AUTHORIZATION=token_for(reader_a),
        HTTP_HOST="evil.example",
    )
    assert status == 400
    assert app.app.calls == 1


def test_the_production_wsgi_application_has_the_fast_path():
    from webapp.wsgi import application

    assert isinstance(application, fastpath.FrameFastPath)
