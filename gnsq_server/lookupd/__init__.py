"""The nsqlookupd daemon: registration db, TCP protocol V1 and HTTP API.

`gnsqlookupd` (cli.py) builds an Options object and calls `run(opts)`; tests start a
`LookupdServer` on port 0 and read its `tcp_port` / `http_port`.
"""

from gnsq_server.lookupd.protocol_v1 import ClientV1, LookupProtocolV1
from gnsq_server.lookupd.registry import PeerInfo, Producer, Registration, RegistrationDB
from gnsq_server.lookupd.server import LookupdServer, run
from gnsq_server.serving import ListenError

__all__ = [
    "ClientV1",
    "ListenError",
    "LookupProtocolV1",
    "LookupdServer",
    "PeerInfo",
    "Producer",
    "Registration",
    "RegistrationDB",
    "run",
]
