"""gnsq_server: NSQ's nsqd and nsqlookupd daemons, wire-compatible, on gevent."""

__version__ = "0.1.0"

#: The NSQ release whose wire behaviour we reproduce; reported wherever nsqd reports a version.
NSQ_VERSION = "1.3.0"

__all__ = ["__version__", "NSQ_VERSION"]
