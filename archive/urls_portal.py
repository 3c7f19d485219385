"""Portal URLs of the archive, mounted at ``/o/<slug>/archive/``."""

from django.urls import URLPattern, path

from archive.ae_titles import views as ae_title_views
from archive.analytics.views import analytics as analytics_view
from archive.dimse import views as dimse_views
from archive.ingest import views as ingest_views
from archive.locations import views as location_views
from archive.replicas import views as replica_views
from archive.restores import views as restore_views
from archive.retention import views as retention_views
from archive.studies import views as study_views
from archive.tiering import views as tiering_views

urlpatterns: list[URLPattern] = [
    path("studies/", study_views.studies, name="portal-studies"),
    path("studies/<int:study_id>/", study_views.study_detail, name="portal-study"),
    path(
        "studies/<int:study_id>/download/", study_views.study_download, name="portal-study-download"
    ),
    # The images: thumbnails, the series viewer and its slices, one series' download.
    path(
        "studies/<int:study_id>/thumbnail/",
        study_views.study_thumbnail,
        name="portal-study-thumbnail",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/thumbnail/",
        study_views.series_thumbnail,
        name="portal-series-thumbnail",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/view/",
        study_views.series_view,
        name="portal-series-view",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/download/",
        study_views.series_download,
        name="portal-series-download",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/instances/<int:instance_id>/rendered/",
        study_views.instance_rendered,
        name="portal-instance-rendered",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/instances/<int:instance_id>/frames/"
        "<int:frame>/rendered/",
        study_views.instance_rendered,
        name="portal-frame-rendered",
    ),
    path(
        "studies/<int:study_id>/series/<int:series_id>/instances/<int:instance_id>/thumbnail/",
        study_views.instance_thumbnail,
        name="portal-instance-thumbnail",
    ),
    path(
        "studies/<int:study_id>/restore/",
        restore_views.study_restore,
        name="portal-study-restore",
    ),
    path("studies/<int:study_id>/trash/", retention_views.study_trash, name="portal-study-trash"),
    path(
        "studies/<int:study_id>/untrash/",
        retention_views.study_untrash,
        name="portal-study-untrash",
    ),
    path("studies/<int:study_id>/hold/", retention_views.study_hold, name="portal-study-hold"),
    path("restores/", restore_views.restore_list, name="portal-restores"),
    path("restores/<int:restore_id>/", restore_views.restore_detail, name="portal-restore"),
    path("trash/", retention_views.trash_list, name="portal-trash"),
    path("legal-holds/", retention_views.hold_list, name="portal-holds"),
    path("legal-holds/<int:hold_id>/lift/", retention_views.hold_lift, name="portal-hold-lift"),
    path("ingest/", ingest_views.ingest_page, name="portal-ingest"),
    path("ingest/uploads/", ingest_views.upload_create, name="portal-ingest-upload"),
    path("ingest/import/", ingest_views.import_create, name="portal-ingest-import"),
    path("ingest/jobs/<int:job_id>/", ingest_views.job_detail, name="portal-ingest-job"),
    path(
        "ingest/jobs/<int:job_id>/progress/",
        ingest_views.job_progress,
        name="portal-ingest-job-progress",
    ),
    path(
        "ingest/jobs/<int:job_id>/files/",
        ingest_views.upload_chunk,
        name="portal-ingest-upload-chunk",
    ),
    path(
        "ingest/jobs/<int:job_id>/finish/",
        ingest_views.upload_finish,
        name="portal-ingest-upload-finish",
    ),
    # DICOM connections: the listener, AE titles, destinations and what associations did. The
    # AE title and destination pages lived under ingest/ before; those URLs redirect here.
    path("dicom/", dimse_views.connections_page, name="portal-dicom"),
    path(
        "dicom/associations/<int:association_id>/",
        dimse_views.association_page,
        name="portal-dicom-association",
    ),
    path("dicom/ae-titles/new/", ae_title_views.ae_create, name="portal-ae-create"),
    path("dicom/ae-titles/<int:ae_id>/edit/", ae_title_views.ae_edit, name="portal-ae-edit"),
    path("dicom/ae-titles/<int:ae_id>/delete/", ae_title_views.ae_delete, name="portal-ae-delete"),
    path(
        "dicom/destinations/new/",
        ae_title_views.destination_create,
        name="portal-destination-create",
    ),
    path(
        "dicom/destinations/<int:destination_id>/edit/",
        ae_title_views.destination_edit,
        name="portal-destination-edit",
    ),
    path(
        "dicom/destinations/<int:destination_id>/delete/",
        ae_title_views.destination_delete,
        name="portal-destination-delete",
    ),
    path(
        "dicom/destinations/<int:destination_id>/test/",
        ae_title_views.destination_echo,
        name="portal-destination-test",
    ),
    path("ingest/ae-titles/<path:rest>", ae_title_views.moved, {"section": "ae-titles"}),
    path("ingest/destinations/<path:rest>", ae_title_views.moved, {"section": "destinations"}),
    path("storage/", location_views.storage, name="portal-storage"),
    path("storage/quota/", location_views.storage_quota, name="portal-storage-quota"),
    path("storage/replica/drill/", replica_views.drill_run, name="portal-replica-drill"),
    path("storage/locations/new/", location_views.location_create, name="portal-location-create"),
    path(
        "storage/locations/<int:location_id>/edit/",
        location_views.location_edit,
        name="portal-location-edit",
    ),
    path(
        "storage/locations/<int:location_id>/test/",
        location_views.location_test,
        name="portal-location-test",
    ),
    path(
        "storage/locations/<int:location_id>/test/clear/",
        location_views.location_test_clear,
        name="portal-location-test-clear",
    ),
    path(
        "storage/locations/<int:location_id>/delete/",
        location_views.location_delete,
        name="portal-location-delete",
    ),
    path("analytics/", analytics_view, name="portal-analytics"),
    path("policies/", tiering_views.policies_page, name="portal-policies"),
    path(
        "policies/versions/<int:number>/activate/",
        tiering_views.policy_activate,
        name="portal-policy-activate",
    ),
    path("policies/plan/", tiering_views.policy_plan_now, name="portal-policy-plan"),
]
