"""gnsqadmin: a web UI and nsqadmin-compatible JSON API over the daemons' HTTP APIs.

``cluster`` reads and acts on nsqlookupd/nsqd (through an injected fetch function), ``stats``
sums nsqd ``/stats`` into nsqadmin's shapes, ``rates`` keeps message-rate history for the charts,
``access`` decides who may act, ``notify`` announces actions, ``client`` is the HTTP client,
``app`` is the Flask app and ``server`` the lifecycle.
"""

from gnsq_server.admin.cluster import ClusterInfo, UpstreamError
from gnsq_server.admin.rates import RateHistory

__all__ = ["ClusterInfo", "RateHistory", "UpstreamError"]
