"""pynetdicom's side of connecting to a destination: an AE whose associations connect only to
the addresses ``tenants.netguard`` checked. ``archive.ae_titles.services.destination_associate``
imports this module when it first connects, so that processes that never make an association
(web workers, most of the time) do not load pynetdicom.
"""

from __future__ import annotations

import ssl

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import T_CONNECT, AddressInformation, AssociationSocket

from tenants import netguard


class PinnedSocket(AssociationSocket):
    """An association's socket that connects only to the addresses ``tenants.netguard`` checked
    (it never resolves the host again) and keeps why connecting failed, which pynetdicom's own
    ``connect`` only logs."""

    checked: list[netguard.AddrInfo]
    failure: OSError | None = None

    def connect(self, primitive: T_CONNECT) -> None:
        unused = self.socket
        try:
            sock = netguard.connect(self.checked, timeout=self.assoc.connection_timeout)
            try:
                if self.tls_args:
                    context, server_hostname = self.tls_args
                    # On a connected socket the handshake happens here, within the timeout.
                    sock = context.wrap_socket(sock, server_hostname=server_hostname)
                # As pynetdicom's own connect: reads are driven by select() from here on.
                sock.settimeout(None)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self.failure = exc
            self.socket = None
            if unused is not None:
                unused.close()
            primitive.result = "Evt17"  # transport connection failed
            self.provider_queue.put(primitive)
        else:
            self.socket = sock
            if unused is not None:
                unused.close()
            self.assoc.requestor.address_info = AddressInformation.from_tuple(sock.getsockname())
            # The address actually connected to (one of the checked ones), for the messages.
            self.assoc.acceptor.address_info = AddressInformation.from_tuple(sock.getpeername())
            self._is_connected = True
            evt.trigger(self.assoc, evt.EVT_CONN_OPEN, {"address": primitive.address_info.as_tuple})
            primitive.result = "Evt2"  # transport connection confirmed
            self.provider_queue.put(primitive)
        finally:
            self._ready.set()


class PinnedAE(AE):
    """A requesting AE whose associations connect through ``PinnedSocket``."""

    def __init__(self, ae_title: str, checked: list[netguard.AddrInfo]) -> None:
        super().__init__(ae_title=ae_title)
        self.checked = checked
        self.sockets: list[PinnedSocket] = []

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock = PinnedSocket(assoc, address=address)
        sock.tls_args = tls_args
        sock.checked = self.checked
        self.sockets.append(sock)
        return sock
