"""The archive's REST API, mounted by saas.urls at /api/v1/ (token) and /api/v1/o/<org_slug>/
(session). Ids use the ``int`` converter: a non-numeric id is a plain 404."""

from django.urls import URLPattern, path

from archive.ae_titles import apis as ae_titles_api
from archive.analytics import apis as analytics_api
from archive.dimse import apis as dimse_api
from archive.ingest import apis as ingest_api
from archive.locations import apis as locations_api
from archive.reconcile import apis as reconcile_api
from archive.replicas import apis as replicas_api
from archive.restores import apis as restores_api
from archive.retention import apis as retention_api
from archive.studies import apis as studies_api
from archive.tiering import apis as tiering_api

urlpatterns: list[URLPattern] = [
    path("studies/", studies_api.StudyListApi.as_view(), name="api-studies"),
    path("studies/<int:study_id>/", studies_api.StudyDetailApi.as_view(), name="api-study"),
    path(
        "studies/<int:study_id>/series/",
        studies_api.StudySeriesListApi.as_view(),
        name="api-study-series",
    ),
    path("series/<int:series_id>/", studies_api.SeriesDetailApi.as_view(), name="api-series"),
    path(
        "series/<int:series_id>/instances/",
        studies_api.SeriesInstanceListApi.as_view(),
        name="api-series-instances",
    ),
    path(
        "instances/<int:instance_id>/", studies_api.InstanceDetailApi.as_view(), name="api-instance"
    ),
    path("ingest-jobs/", ingest_api.IngestJobListApi.as_view(), name="api-ingest-jobs"),
    path(
        "ingest-jobs/<int:job_id>/", ingest_api.IngestJobDetailApi.as_view(), name="api-ingest-job"
    ),
    path(
        "ingest-jobs/<int:job_id>/failures/",
        ingest_api.IngestJobFailureListApi.as_view(),
        name="api-ingest-job-failures",
    ),
    path(
        "storage-locations/", locations_api.LocationListApi.as_view(), name="api-storage-locations"
    ),
    path(
        "storage-locations/<int:location_id>/",
        locations_api.LocationDetailApi.as_view(),
        name="api-storage-location",
    ),
    path(
        "storage-locations/<int:location_id>/test/",
        locations_api.LocationTestApi.as_view(),
        name="api-storage-location-test",
    ),
    path(
        "reconciliations/",
        reconcile_api.ReconciliationListApi.as_view(),
        name="api-reconciliations",
    ),
    path(
        "reconciliations/<int:reconciliation_id>/",
        reconcile_api.ReconciliationDetailApi.as_view(),
        name="api-reconciliation",
    ),
    path(
        "archive-settings/", locations_api.ArchiveSettingsApi.as_view(), name="api-archive-settings"
    ),
    path("dicom-aes/", ae_titles_api.AEListApi.as_view(), name="api-dicom-aes"),
    path("dicom-aes/<int:ae_id>/", ae_titles_api.AEDetailApi.as_view(), name="api-dicom-ae"),
    path(
        "dicom-destinations/",
        ae_titles_api.DestinationListApi.as_view(),
        name="api-dicom-destinations",
    ),
    path(
        "dicom-destinations/<int:destination_id>/",
        ae_titles_api.DestinationDetailApi.as_view(),
        name="api-dicom-destination",
    ),
    path(
        "dicom-destinations/<int:destination_id>/echo/",
        ae_titles_api.DestinationEchoApi.as_view(),
        name="api-dicom-destination-echo",
    ),
    # What each DICOM association did.
    path(
        "dicom-associations/",
        dimse_api.AssociationListApi.as_view(),
        name="api-dicom-associations",
    ),
    path(
        "dicom-associations/<int:association_id>/",
        dimse_api.AssociationDetailApi.as_view(),
        name="api-dicom-association",
    ),
    path(
        "dicom-associations/<int:association_id>/operations/",
        dimse_api.AssociationOperationListApi.as_view(),
        name="api-dicom-association-operations",
    ),
    # Archive policies.
    path("policies/versions/", tiering_api.PolicyVersionListApi.as_view(), name="api-policies"),
    path(
        "policies/versions/<int:number>/",
        tiering_api.PolicyVersionDetailApi.as_view(),
        name="api-policy",
    ),
    path(
        "policies/versions/<int:number>/activate/",
        tiering_api.PolicyActivateApi.as_view(),
        name="api-policy-activate",
    ),
    path("policies/active/", tiering_api.PolicyActiveApi.as_view(), name="api-policy-active"),
    path("policies/preview/", tiering_api.PolicyPreviewApi.as_view(), name="api-policy-preview"),
    path("policies/plan/", tiering_api.PolicyPlanApi.as_view(), name="api-policy-plan"),
    # The disaster-recovery replica.
    path("replication/", locations_api.ReplicationStatusApi.as_view(), name="api-replication"),
    path(
        "replication/failures/",
        replicas_api.ReplicaFailureListApi.as_view(),
        name="api-replication-failures",
    ),
    path(
        "replication/failures/retry/",
        replicas_api.ReplicaRetryApi.as_view(),
        name="api-replication-retry",
    ),
    path("replication/drills/", replicas_api.DrillListApi.as_view(), name="api-replication-drills"),
    path(
        "replication/drills/<int:drill_id>/",
        replicas_api.DrillDetailApi.as_view(),
        name="api-replication-drill",
    ),
    # Restores, legal holds and the trash.
    path("restores/", restores_api.RestoreListApi.as_view(), name="api-restores"),
    path("restores/<int:restore_id>/", restores_api.RestoreDetailApi.as_view(), name="api-restore"),
    path("prefetch/", restores_api.PrefetchApi.as_view(), name="api-prefetch"),
    path("legal-holds/", retention_api.HoldListApi.as_view(), name="api-legal-holds"),
    path(
        "legal-holds/<int:hold_id>/", retention_api.HoldDetailApi.as_view(), name="api-legal-hold"
    ),
    path(
        "legal-holds/<int:hold_id>/lift/",
        retention_api.HoldLiftApi.as_view(),
        name="api-legal-hold-lift",
    ),
    path("trash/", retention_api.TrashListApi.as_view(), name="api-trash"),
    path(
        "trash/<int:study_id>/untrash/",
        retention_api.TrashUntrashApi.as_view(),
        name="api-trash-untrash",
    ),
    path(
        "analytics/access-curve/", analytics_api.AccessCurveApi.as_view(), name="api-access-curve"
    ),
    path("analytics/simulation/", analytics_api.SimulationApi.as_view(), name="api-simulation"),
    path(
        "analytics/recommendation/",
        analytics_api.RecommendationApi.as_view(),
        name="api-recommendation",
    ),
    # Tier moves.
    path("tier-moves/", tiering_api.MoveListApi.as_view(), name="api-tier-moves"),
    path(
        "tier-moves/summary/", tiering_api.MoveSummaryApi.as_view(), name="api-tier-moves-summary"
    ),
    path("tier-moves/<int:move_id>/", tiering_api.MoveDetailApi.as_view(), name="api-tier-move"),
]
