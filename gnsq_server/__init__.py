"""gnsq_server: NSQ's nsqd and nsqlookupd daemons, wire-compatible, on gevent."""

import platform

__version__ = "0.1.0"

#: The NSQ release whose wire behaviour we reproduce; reported wherever nsqd reports a version.
NSQ_VERSION = "1.3.0"



def version_line(program: str) -> str:
    """The daemons' version line, shaped like nsqd's `nsqd v1.3.0 (built w/go1.21.5)`."""
    return f"{program} v{NSQ_VERSION} (built w/python{platform.python_version()})"


__all__ = ["__version__", "NSQ_VERSION", "version_line"]
