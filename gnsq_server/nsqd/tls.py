"""nsqd's TLS configuration: one server context for the in-band TCP upgrade and HTTPS.

Built from --tls-cert/--tls-key, --tls-client-auth-policy, --tls-root-ca-file and
--tls-min-version as nsqd's buildTLSConfig does, plus the names nsqd reports in /stats.

One difference: Go's ``require`` policy accepts any client certificate without checking it;
Python's ssl module cannot ask for a certificate without verifying it, so ``require`` checks
the certificate against --tls-root-ca-file (or the system CAs) like ``require-verify``.
And OpenSSL 3's default security level leaves TLS 1.0/1.1 out even when --tls-min-version
allows them; we keep that default rather than weaken the cipher list.
"""

from __future__ import annotations

import ssl

from gevent import ssl as gevent_ssl

#: TLS protocol codes (--tls-min-version) to the ssl module's versions
_MIN_VERSIONS = {
    0x0301: ssl.TLSVersion.TLSv1,
    0x0302: ssl.TLSVersion.TLSv1_1,
    0x0303: ssl.TLSVersion.TLSv1_2,
    0x0304: ssl.TLSVersion.TLSv1_3,
}

#: OpenSSL's TLS 1.2 suite names to the IANA names Go's tls.CipherSuiteName prints
#: (TLS 1.3 suites already carry their IANA names).
_IANA_CIPHER_NAMES = {
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "ECDHE-ECDSA-AES128-SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "AES128-SHA256": "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
}

#: the ssl module's protocol names to the ones nsqd's stats use
_VERSION_NAMES = {"TLSv1": "TLS1.0", "TLSv1.1": "TLS1.1", "TLSv1.2": "TLS1.2", "TLSv1.3": "TLS1.3"}

HANDSHAKE_TIMEOUT = 5.0  # nsqd's deadline for the TCP upgrade handshake


def server_context(opts) -> ssl.SSLContext | None:
    """The server context for ``opts``, or None when no certificate is configured."""
    if not opts.tls_cert and not opts.tls_key:
        return None
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(opts.tls_cert, opts.tls_key)
    context.minimum_version = _MIN_VERSIONS.get(opts.tls_min_version, ssl.TLSVersion.TLSv1)
    if opts.tls_root_ca_file:
        context.load_verify_locations(cafile=opts.tls_root_ca_file)
    elif opts.tls_client_auth_policy:
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    if opts.tls_client_auth_policy in ("require", "require-verify"):
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def version_name(sock: ssl.SSLSocket) -> str:
    version = sock.version() or ""
    return _VERSION_NAMES.get(version, version)


def cipher_suite_name(sock: ssl.SSLSocket) -> str:
    cipher = sock.cipher()
    if not cipher:
        return ""
    return _IANA_CIPHER_NAMES.get(cipher[0], cipher[0])


def peer_common_name(sock: ssl.SSLSocket) -> str:
    """The subject CN of a verified client certificate ("" without one), for auth queries."""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""
