"""DICOMweb routes, served at /dicomweb/ (all of the user's projects) and again at
/dicomweb/projects/<slug>/ (one project: the base URL to give a PACS for STOW and pulls).

UIDs are matched loosely (anything but "/") so that a malformed UID is a clean 404, and every
route takes an optional trailing slash, as clients differ.
"""

from __future__ import annotations

from django.urls import include, path, re_path

from studies.dicomweb import views

app_name = "dicomweb"

UID = r"[^/]+"
ST = rf"studies/(?P<study>{UID})"
SE = rf"{ST}/series/(?P<series>{UID})"
IN = rf"{SE}/instances/(?P<instance>{UID})"
FR = rf"{IN}/frames/(?P<frames>[^/]+)"

routes = [
    re_path(r"^studies/?$", views.StudiesView.as_view(), name="studies"),
    re_path(r"^series/?$", views.SeriesSearchView.as_view(), name="series-search"),
    re_path(r"^instances/?$", views.InstancesSearchView.as_view(), name="instances-search"),
    re_path(rf"^{ST}/?$", views.StudyView.as_view(), name="study"),
    re_path(rf"^{ST}/metadata/?$", views.MetadataView.as_view(), name="study-metadata"),
    re_path(rf"^{ST}/rendered/?$", views.RenderedView.as_view(), name="study-rendered"),
    re_path(rf"^{ST}/thumbnail/?$", views.ThumbnailView.as_view(), name="study-thumbnail"),
    re_path(rf"^{ST}/series/?$", views.SeriesSearchView.as_view(), name="study-series"),
    re_path(rf"^{ST}/instances/?$", views.InstancesSearchView.as_view(), name="study-instances"),
    re_path(rf"^{SE}/?$", views.RetrieveView.as_view(), name="series"),
    re_path(rf"^{SE}/metadata/?$", views.MetadataView.as_view(), name="series-metadata"),
    re_path(rf"^{SE}/rendered/?$", views.RenderedView.as_view(), name="series-rendered"),
    re_path(rf"^{SE}/thumbnail/?$", views.ThumbnailView.as_view(), name="series-thumbnail"),
    re_path(rf"^{SE}/instances/?$", views.InstancesSearchView.as_view(), name="series-instances"),
    re_path(rf"^{IN}/?$", views.RetrieveView.as_view(), name="instance"),
    re_path(rf"^{IN}/metadata/?$", views.MetadataView.as_view(), name="instance-metadata"),
    re_path(rf"^{IN}/rendered/?$", views.RenderedView.as_view(), name="instance-rendered"),
    re_path(rf"^{IN}/thumbnail/?$", views.ThumbnailView.as_view(), name="instance-thumbnail"),
    re_path(
        rf"^{IN}/bulkdata/(?P<tag>[0-9A-Fa-f]{{8}})/?$",
        views.BulkdataView.as_view(),
        name="bulkdata",
    ),
    re_path(rf"^{FR}/?$", views.FramesView.as_view(), name="frames"),
    re_path(rf"^{FR}/rendered/?$", views.RenderedView.as_view(), name="frame-rendered"),
    re_path(rf"^{FR}/thumbnail/?$", views.ThumbnailView.as_view(), name="frame-thumbnail"),
]

urlpatterns = [
    path("", views.RootView.as_view(), name="root"),
    path("projects/<slug:project_slug>/", views.RootView.as_view(), name="project-root"),
    path("projects/<slug:project_slug>/", include(routes)),
    path("", include(routes)),
]
