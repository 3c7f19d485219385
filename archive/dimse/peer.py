"""What a DIMSE service handler gets from the listener: the admitted association's organization
and who called, and the query/retrieve SOP classes the listener offers."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from tenants.models import Organization

# Patient Root and Study Root Query/Retrieve Information Models (PS3.4 C.6): FIND, MOVE, GET.
QUERY_RETRIEVE_SOP_CLASSES: tuple[UID, ...] = (
    UID("1.2.840.10008.5.1.4.1.2.1.1"),  # Patient Root FIND
    UID("1.2.840.10008.5.1.4.1.2.2.1"),  # Study Root FIND
    UID("1.2.840.10008.5.1.4.1.2.1.2"),  # Patient Root MOVE
    UID("1.2.840.10008.5.1.4.1.2.2.2"),  # Study Root MOVE
    UID("1.2.840.10008.5.1.4.1.2.1.3"),  # Patient Root GET
    UID("1.2.840.10008.5.1.4.1.2.2.3"),  # Study Root GET
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
