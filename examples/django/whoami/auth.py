"""
Authentication from the identity nginx forwards.

nginx verifies the client certificate, looks it up in its allowlist and,
only when the certificate is allowed, sends the username in the
X-Mtls-Identity request header.  It removes any copy the client sent.
Django's stock remote-user machinery does the rest.
"""

import logging
from urllib.parse import unquote

from django.contrib.auth.backends import RemoteUserBackend
from django.contrib.auth.middleware import RemoteUserMiddleware

log = logging.getLogger(__name__)


class MtlsIdentityMiddleware(RemoteUserMiddleware):
    # request.META key of the X-Mtls-Identity header.  The stock
    # REMOTE_USER is a variable the WSGI server sets, which nginx cannot
    # reach through proxy_pass: every request header it sends arrives
    # as HTTP_<NAME>.
    header = 'HTTP_X_MTLS_IDENTITY'

    # A request without the header is anonymous, even if it carries a
    # session cookie from an earlier, allowed request.
    force_logout_if_no_header = True


class MtlsIdentityBackend(RemoteUserBackend):
    # The header may only name users that already exist in Django (and
    # are active); an unknown name leaves the request anonymous.  Users
    # are created by an administrator, e.g. with manage.py mtls_setup.
    create_unknown_user = False

    def clean_username(self, username):
        # nginx percent-encodes "%", ",", quotes, backslashes and every
        # byte outside printable ASCII, so the header is always plain
        # ASCII; decoding gives the UTF-8 username from the database
        return unquote(username, errors='strict')

    def authenticate(self, request, remote_user):
        user = super().authenticate(request, remote_user)
        if user is None and remote_user:
            # nginx allowed the certificate, but Django does not know
            # (or has deactivated) the user: worth an operator's look.
            log.warning('identity %r is not an active Django user',
                        remote_user)
        return user
