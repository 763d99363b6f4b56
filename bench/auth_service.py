"""The auth_request service of the bench: what people write today.

A WSGI application for gunicorn.  nginx's auth_request sends it the
verified client certificate (nginx's $ssl_client_escaped_cert) and the
verification result; it hashes the certificate (SHA-256 over the DER,
the fingerprint the module's schema stores), asks PostgreSQL whether an
enabled, current identity has that fingerprint and no revocation names
it, and answers 200 with X-Remote-User and X-Remote-Groups, or 403.

Each worker process keeps one database connection, in autocommit mode,
with the lookup prepared once.  It checks fingerprint identities and
fingerprint revocations only: less than the module does (no other key
kinds, no revocation by issuer and serial), so the comparison does not
favour the module.

Run: gunicorn --chdir bench auth_service:application, with
BENCH_AUTH_DSN set to a libpq connection string.
"""

import base64
import hashlib
import os
import urllib.parse

import psycopg2

DSN = os.environ.get("BENCH_AUTH_DSN", "host=127.0.0.1 dbname=postgres")

LOOKUP = """
PREPARE lookup(text) AS
SELECT i.username, array_to_string(i.groups, ',')
  FROM mtls_identity.identity i
 WHERE i.key_kind = 'fingerprint' AND i.key_value = $1
   AND i.enabled
   AND (i.valid_from IS NULL OR i.valid_from <= now())
   AND (i.valid_until IS NULL OR now() < i.valid_until)
   AND NOT EXISTS (SELECT 1 FROM mtls_identity.revocation r
                    WHERE r.fingerprint = $1)
"""

_conn = None


def connection():
    global _conn

    if _conn is None or _conn.closed:
        conn = psycopg2.connect(DSN, application_name="bench auth service")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(LOOKUP)
        _conn = conn

    return _conn


def fingerprint(escaped_pem):
    pem = urllib.parse.unquote(escaped_pem)
    lines = [line for line in pem.splitlines()
             if line and not line.startswith("-----")]
    der = base64.b64decode("".join(lines), validate=True)
    return hashlib.sha256(der).hexdigest()


def lookup(fp):
    global _conn

    for attempt in (1, 2):
        try:
            with connection().cursor() as cur:
                cur.execute("EXECUTE lookup(%s)", (fp,))
                return cur.fetchone()
        except psycopg2.OperationalError:
            # the connection broke: one new one, then give up
            _conn = None
            if attempt == 2:
                raise

    return None


def application(environ, start_response):
    verify = environ.get("HTTP_X_SSL_CLIENT_VERIFY", "")
    cert = environ.get("HTTP_X_SSL_CLIENT_CERT", "")

    if verify != "SUCCESS" or not cert:
        start_response("401 Unauthorized", [("Content-Length", "0")])
        return [b""]

    try:
        row = lookup(fingerprint(cert))
    except (ValueError, psycopg2.Error):
        start_response("503 Service Unavailable", [("Content-Length", "0")])
        return [b""]

    if row is None:
        start_response("403 Forbidden", [("Content-Length", "0")])
        return [b""]

    start_response("200 OK", [("Content-Length", "0"),
                              ("X-Remote-User", row[0]),
                              ("X-Remote-Groups", row[1])])
    return [b""]
