"""gnsqadmin: a web UI and nsqadmin-compatible JSON API over the daemons' HTTP APIs.

``cluster`` reads and acts on nsqlookupd/nsqd (through an injected fetch function), ``rates``
keeps message-rate history for the charts, ``app`` is the Flask app and ``server`` the lifecycle.
"""

from gnsq_server.admin.cluster import ClusterInfo, UpstreamError
from gnsq_server.admin.rates import RateHistory

__all__ = ["ClusterInfo", "RateHistory", "UpstreamError"]
