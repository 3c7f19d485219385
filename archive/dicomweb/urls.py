"""PS3.18 resource paths, mounted at /dicomweb/ (the service root clients are given)."""

from django.urls import URLPattern, path

from archive.dicomweb import views

_STUDY = "studies/<str:study>"
_SERIES = f"{_STUDY}/series/<str:series>"
_INSTANCE = f"{_SERIES}/instances/<str:instance>"

urlpatterns: list[URLPattern] = [
    path("studies", views.StudiesView.as_view(), name="dicomweb-studies"),
    path("series", views.SeriesSearchView.as_view(), name="dicomweb-series"),
    path("instances", views.InstanceSearchView.as_view(), name="dicomweb-instances"),
    path(_STUDY, views.StudyView.as_view(), name="dicomweb-study"),
    path(f"{_STUDY}/metadata", views.MetadataView.as_view(), name="dicomweb-study-metadata"),
    path(f"{_STUDY}/series", views.SeriesSearchView.as_view(), name="dicomweb-study-series"),
    path(
        f"{_STUDY}/instances",
        views.InstanceSearchView.as_view(),
        name="dicomweb-study-instances",
    ),
    path(_SERIES, views.SeriesView.as_view(), name="dicomweb-series-retrieve"),
    path(f"{_SERIES}/metadata", views.MetadataView.as_view(), name="dicomweb-series-metadata"),
    path(
        f"{_SERIES}/instances",
        views.InstanceSearchView.as_view(),
        name="dicomweb-series-instances",
    ),
    path(_INSTANCE, views.InstanceView.as_view(), name="dicomweb-instance"),
    path(
        f"{_INSTANCE}/metadata",
        views.MetadataView.as_view(),
        name="dicomweb-instance-metadata",
    ),
    path(
        f"{_INSTANCE}/bulkdata/<str:tag>",
        views.BulkDataView.as_view(),
        name="dicomweb-instance-bulkdata",
    ),
    path(
        f"{_INSTANCE}/frames/<str:frames>",
        views.FramesView.as_view(),
        name="dicomweb-instance-frames",
    ),
    path(f"{_STUDY}/rendered", views.RenderedView.as_view(), name="dicomweb-study-rendered"),
    path(f"{_SERIES}/rendered", views.RenderedView.as_view(), name="dicomweb-series-rendered"),
    path(f"{_INSTANCE}/rendered", views.RenderedView.as_view(), name="dicomweb-instance-rendered"),
    path(
        f"{_INSTANCE}/frames/<str:frames>/rendered",
        views.RenderedView.as_view(),
        name="dicomweb-frames-rendered",
    ),
    path(f"{_STUDY}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-study-thumbnail"),
    path(f"{_SERIES}/thumbnail", views.ThumbnailView.as_view(), name="dicomweb-series-thumbnail"),
    path(
        f"{_INSTANCE}/thumbnail",
        views.ThumbnailView.as_view(),
        name="dicomweb-instance-thumbnail",
    ),
    path(
        f"{_INSTANCE}/frames/<str:frames>/thumbnail",
        views.ThumbnailView.as_view(),
        name="dicomweb-frames-thumbnail",
    ),
]
