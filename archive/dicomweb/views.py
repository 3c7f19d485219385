"""The DICOMweb resources: thin views over stow / qido / wado, all OrgAPIView subclasses.

Reading needs the ``images.read`` permission (token scope ``dicom:read``), storing needs
``images.write`` (``dicom:write``). UIDs of another organization answer 404 like unknown ones.
"""

from __future__ import annotations

from typing import Any

from django.http.response import HttpResponseBase
from rest_framework.request import Request

from archive.dicomweb import bulkdata, qido, rendered, selectors, stow, thumbnails, wado
from archive.dicomweb.common import (
    DicomWebView,
    base_url,
    dicom_json_response,
    require_json_acceptable,
    warning_header,
)
from archive.dicomweb.frames import frames_response
from archive.index import selectors as index_selectors
from archive.ingest.dicom import uid_problem
from archive.models import Instance
from tenants.models import Organization
from tenants.roles import Perm

MORE_RESULTS = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


class _Search(DicomWebView):
    permissions_required = {"GET": Perm.IMAGES_READ}
    level = "study"

    def search(self, request: Request, scope: qido.Scope) -> HttpResponseBase:
        require_json_acceptable(request._request)
        result = qido.search(org=self.org, request=request._request, level=self.level, scope=scope)
        warning = warning_header(request._request, MORE_RESULTS) if result.more else ""
        return dicom_json_response(result.items, warning=warning)


class _Store(DicomWebView):
    def store(self, request: Request, study_uid: str | None) -> HttpResponseBase:
        require_json_acceptable(request._request)
        body = stow.stow_body(request._request)
        outcome = stow.stow_receive(
            org=self.org,
            actor=self.actor,
            body=body,
            expected_study_uid=study_uid,
            source=f"STOW-RS {self.actor.label}",
        )
        data = stow.stow_response_body(
            outcome, base=base_url(request._request), expected_study_uid=study_uid
        )
        duplicates = outcome.count("duplicate")
        warning = (
            warning_header(
                request._request,
                f"{duplicates} instance(s) were already stored; the stored copy was kept.",
            )
            if duplicates
            else ""
        )
        return dicom_json_response(data, status=outcome.http_status, warning=warning)


class StudiesView(_Search, _Store):
    """GET /studies: search studies. POST /studies: store instances (STOW-RS)."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.IMAGES_WRITE}

    def get(self, request: Request) -> HttpResponseBase:
        return self.search(request, qido.Scope())

    def post(self, request: Request) -> HttpResponseBase:
        return self.store(request, None)


class StudyView(_Store):
    """GET /studies/{study}: retrieve the study. POST: store instances of this study only."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.IMAGES_WRITE}

    def get(self, request: Request, study: str) -> HttpResponseBase:
        row = selectors.study_get(org=self.org, study_uid=study)
        instances = list(
            selectors.instances_of(org=self.org, study=row).select_related("location", "series")
        )
        return wado.retrieve_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=row,
            series=None,
            instances=instances,
        )

    def post(self, request: Request, study: str) -> HttpResponseBase:
        return self.store(request, study)


class SeriesSearchView(_Search):
    """GET /series and /studies/{study}/series."""

    level = "series"

    def get(self, request: Request, study: str | None = None) -> HttpResponseBase:
        scope = qido.Scope()
        if study is not None:
            scope.study = selectors.study_get(org=self.org, study_uid=study)
        return self.search(request, scope)


class InstanceSearchView(_Search):
    """GET /instances, /studies/{study}/instances, /studies/{study}/series/{series}/instances."""

    level = "instance"

    def get(
        self, request: Request, study: str | None = None, series: str | None = None
    ) -> HttpResponseBase:
        scope = qido.Scope()
        if study is not None:
            scope.study = selectors.study_get(org=self.org, study_uid=study)
            if series is not None:
                scope.series = selectors.series_get(
                    org=self.org, study=scope.study, series_uid=series
                )
        return self.search(request, scope)


class SeriesView(DicomWebView):
    """GET /studies/{study}/series/{series}: retrieve the series."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(self, request: Request, study: str, series: str) -> HttpResponseBase:
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
        instances = list(
            selectors.instances_of(org=self.org, study=study_row, series=series_row).select_related(
                "location", "series"
            )
        )
        return wado.retrieve_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instances=instances,
        )


class InstanceView(DicomWebView):
    """GET /studies/{study}/series/{series}/instances/{instance}: retrieve one instance (also as
    single-part ``application/dicom``)."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(self, request: Request, study: str, series: str, instance: str) -> HttpResponseBase:
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
        row = selectors.instance_get(org=self.org, series=series_row, sop_uid=instance)
        row.series = series_row
        return wado.retrieve_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instances=[row],
            single_instance=True,
        )


class MetadataView(DicomWebView):
    """GET .../metadata of a study, a series or an instance."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(self, request: Request, study: str, **kwargs: Any) -> HttpResponseBase:
        require_json_acceptable(request._request)
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = None
        instances = selectors.instances_of(org=self.org, study=study_row)
        count = study_row.instance_count
        if "series" in kwargs:
            series_row = selectors.series_get(
                org=self.org, study=study_row, series_uid=kwargs["series"]
            )
            instances = instances.filter(series=series_row)
            count = series_row.instance_count
        if "instance" in kwargs:
            assert series_row is not None  # the URL names the series before the instance
            row = selectors.instance_get(
                org=self.org, series=series_row, sop_uid=kwargs["instance"]
            )
            instances = instances.filter(pk=row.pk)
            count = 1
        return wado.metadata_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instances=instances,
            count=count,
        )


class BulkDataView(DicomWebView):
    """GET .../instances/{instance}/bulkdata/{tag}: the value of a bulk data attribute (the pixel
    data), by the BulkDataURI the instance's metadata gives."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(
        self, request: Request, study: str, series: str, instance: str, tag: str
    ) -> HttpResponseBase:
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
        row = selectors.instance_get(org=self.org, series=series_row, sop_uid=instance)
        return bulkdata.bulkdata_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instance=row,
            tag=tag,
        )


def _image_instance(org: Organization, study: str, series: str, instance: str) -> Instance:
    """The instance the URL names, with its study, series, location and frame index: one query
    (a viewer asks for many images a minute); when it finds nothing, the selectors say which UID
    is unknown (404)."""
    row = None
    if not any(map(uid_problem, (study, series, instance))):
        row = index_selectors.instance_by_uids(
            org=org, study_uid=study, series_uid=series, sop_uid=instance
        )
    if row is None:
        study_row = selectors.study_get(org=org, study_uid=study)
        series_row = selectors.series_get(org=org, study=study_row, series_uid=series)
        row = selectors.instance_get(org=org, series=series_row, sop_uid=instance)
        row.study, row.series = study_row, series_row
    return row


class RenderedView(DicomWebView):
    """GET .../rendered of a study, a series, an instance or a frame list
    (``archive.dicomweb.rendered``): JPEG, PNG or GIF images."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> HttpResponseBase:
        if instance is not None:
            assert series is not None  # the URL names the series before the instance
            row = _image_instance(self.org, study, series, instance)
            return rendered.rendered_response(
                request=request._request,
                org=self.org,
                actor=self.actor,
                study=row.study,
                series=row.series,
                instances=[row],
                level="instance",
                frames=frames,
            )
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = None
        if series is not None:
            series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
        instances = list(
            selectors.instances_of(org=self.org, study=study_row, series=series_row).select_related(
                "location", "series"
            )
        )
        return rendered.rendered_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instances=instances,
            level="series" if series_row is not None else "study",
        )


class ThumbnailView(DicomWebView):
    """GET .../thumbnail of a study, a series, an instance or one frame
    (``archive.dicomweb.thumbnails``): one small image, kept once rendered."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> HttpResponseBase:
        if instance is not None:
            assert series is not None  # the URL names the series before the instance
            row = _image_instance(self.org, study, series, instance)
            return thumbnails.thumbnail_response(
                request=request._request,
                org=self.org,
                actor=self.actor,
                study=row.study,
                series=row.series,
                instance=row,
                frames=frames,
            )
        study_row = selectors.study_get(org=self.org, study_uid=study)
        series_row = None
        if series is not None:
            series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
        return thumbnails.thumbnail_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=study_row,
            series=series_row,
            instance=None,
        )


class FramesView(DicomWebView):
    """GET .../instances/{instance}/frames/{list}: frames of an image instance, each read from
    the store by one byte range (``archive.dicomweb.frames``)."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    def get(
        self, request: Request, study: str, series: str, instance: str, frames: str
    ) -> HttpResponseBase:
        # One query for the instance, its study, series and frame index: a viewer asks for
        # hundreds of frames a minute. When it finds nothing, the selectors say what is unknown.
        row = None
        if not any(map(uid_problem, (study, series, instance))):
            row = index_selectors.instance_by_uids(
                org=self.org, study_uid=study, series_uid=series, sop_uid=instance
            )
        if row is None:
            study_row = selectors.study_get(org=self.org, study_uid=study)
            series_row = selectors.series_get(org=self.org, study=study_row, series_uid=series)
            row = selectors.instance_get(org=self.org, series=series_row, sop_uid=instance)
            row.study, row.series = study_row, series_row
        return frames_response(
            request=request._request,
            org=self.org,
            actor=self.actor,
            study=row.study,
            series=row.series,
            instance=row,
            frame_list=frames,
        )
