"""Who may do what in gnsqadmin, as nsqadmin decides it.

``--admin-user`` (repeatable) names the users allowed to act (create, delete, pause, unpause,
empty, tombstone); the user is read from ``--acl-http-header`` (X-Forwarded-User), which an
authenticating proxy in front sets. With no admin users everyone may act. ``/config`` answers
only to addresses in ``--allow-config-from-cidr``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping


class Access:
    """The admin-user list and the /config CIDR; read per request, swapped as a whole."""

    def __init__(
        self,
        admin_users: Iterable[str] = (),
        acl_http_header: str = "X-Forwarded-User",
        allow_config_from_cidr: str = "",
    ) -> None:
        self.admin_users = list(admin_users)
        self.acl_http_header = acl_http_header
        self.config_network = (
            ipaddress.ip_network(allow_config_from_cidr, strict=False)
            if allow_config_from_cidr else None
        )

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """nsqadmin's isAuthorizedAdminRequest: no admin users, or the header names one."""
        if not self.admin_users:
            return True
        return headers.get(self.acl_http_header, "") in self.admin_users

    def may_configure(self, remote_ip: str) -> bool | None:
        """True or False for a parseable address, None for one that is not (a 400)."""
        if self.config_network is None:
            return True
        try:
            address = ipaddress.ip_address(remote_ip)
        except ValueError:
            return None
        return address in self.config_network
