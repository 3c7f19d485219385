"""What a DIMSE service handler gets from the listener: the admitted association's organization
and who called, and the query/retrieve SOP classes the listener offers."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tenants.models import Organization

QUERY_RETRIEVE_SOP_CLASSES: tuple[UID, ...] = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)


@dataclass(frozen=True)
class Peer:
    """An admitted association: the organization its called AE title belongs to (every query
    and retrieve is scoped to it), the called and calling AE titles and the caller's address."""

    org: Organization
    called_ae: str
    calling_ae: str
    address: str

    @property
    def source(self) -> str:
        return f"{self.calling_ae}@{self.address} -> {self.called_ae}"
