"""Reads of the study pages beyond the index's own, each scoped to one organization: one
series' download (the study download's rules, narrowed to the series) and what opening a series
in the viewer needs (whether a restore must come first, and what it would cost)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from archive.index import selectors as index_selectors
from archive.index.selectors import DownloadPlan
from archive.models import DerivedObject, Instance, RestoreItem, RestoreRequest, Series, Study
from archive.restores import selectors as restore_selectors
from tenants.errors import NotFound
from tenants.models import Organization

# --- one series' download ----------------------------------------------------------------------


def series_download_instances(
    *, org: Organization, study: Study, series: Series
) -> QuerySet[Instance]:
    """The instances a series download streams: the study download's, of this series only (the
    same readability rule and order)."""
    return index_selectors.study_download_instances(org=org, study=study).filter(series=series)


def series_download_plan(*, org: Organization, study: Study, series: Series) -> DownloadPlan:
    """What a series download would contain; what it leaves out needs a restore first."""
    readable = series_download_instances(org=org, study=study, series=series).aggregate(
        n=Count("id"), size=Sum("size_bytes")
    )
    every = (
        Instance.objects.for_org(org)
        .filter(study=study, series=series)
        .aggregate(n=Count("id"), size=Sum("size_bytes"))
    )
    n, size = int(readable["n"] or 0), int(readable["size"] or 0)
    return DownloadPlan(
        instances=n,
        bytes=size,
        blocked_instances=int(every["n"] or 0) - n,
        blocked_bytes=int(every["size"] or 0) - size,
    )


# --- opening a series in the viewer ------------------------------------------------------------


@dataclass(frozen=True)
class SeriesRestoreNeed:
    """The images of a series that cannot be read now (archive tier, no restored copy): those a
    restore would bring back and what that costs, and those an open restore is bringing back."""

    instances: int
    bytes: int
    in_progress: int
    restore: RestoreRequest | None  # the open restore bringing some of them back
    price: restore_selectors.MeterPrice
    typical_seconds: int
    days: int
    needing: list[Instance]

    @property
    def blocked(self) -> int:
        return self.instances + self.in_progress


def series_restore_need(*, org: Organization, series: Series) -> SeriesRestoreNeed:
    """What stands between a series and the viewer. ``price`` is the marginal charge of the
    restore on the organization's plan (as the study restore's estimate prices it)."""
    now = timezone.now()
    unreadable = list(
        Instance.objects.for_org(org)
        .filter(series=series)
        .filter(restore_selectors.unreadable_q(now))
        # What a restore request needs of them, not their DICOM metadata.
        .only(
            "id", "organization_id", "study_id", "series_id", "size_bytes", "tier", "restored_until"
        )
        .order_by("id")
    )
    open_items = (
        RestoreItem.objects.for_org(org)
        .filter(
            instance__in=[i.pk for i in unreadable],
            ready_at__isnull=True,
            restore__state=RestoreRequest.State.IN_PROGRESS,
        )
        .select_related("restore")
        .order_by("-restore__requested_at")
        if unreadable
        else RestoreItem.objects.none()
    )
    being_restored: set[int] = set()
    restore = None
    for item in open_items:
        being_restored.add(item.instance_id)
        restore = restore or item.restore
    todo = [i for i in unreadable if i.pk not in being_restored]
    size = sum(i.size_bytes for i in todo)
    return SeriesRestoreNeed(
        instances=len(todo),
        bytes=size,
        in_progress=len(being_restored),
        restore=restore,
        price=restore_selectors.meter_price(
            org=org, meter=restore_selectors.RESTORE_METER, quantity=size
        ),
        typical_seconds=restore_selectors.restore_wait_seconds(org),
        days=index_selectors.archive_settings_get(org=org).restore_days,
        needing=unreadable,
    )


def viewer_instance(
    *, org: Organization, study_id: int, series_id: int, instance_id: int
) -> Instance:
    """One instance of one series of one study, as a portal image URL names them, with its
    study, series, location and frame index in one query (a viewer asks for hundreds of slices a
    minute). An id of another organization, study or series, or a study in the trash (DICOMweb's
    reading rule): ``NotFound``."""
    instance = (
        Instance.objects.for_org(org)
        .filter(
            pk=instance_id,
            series_id=series_id,
            study_id=study_id,
            study__trashed_at__isnull=True,
        )
        .select_related("study", "series", "location", "frame_index")
        .first()
    )
    if instance is None:
        raise NotFound("Instance not found.")
    # The instance's series and study are the ones loaded with it.
    instance.series.study = instance.study
    return instance


def thumbnail_kept(*, org: Organization, instance: Instance, size: int) -> bool:
    """Whether a thumbnail of ``instance`` (``size`` square, JPEG) is kept, so that showing it
    reads no archived object."""
    return (
        DerivedObject.objects.for_org(org)
        .filter(
            instance=instance,
            kind=DerivedObject.Kind.THUMBNAIL,
            variant__endswith=f"-{size}x{size}-jpg",
        )
        .exists()
    )
