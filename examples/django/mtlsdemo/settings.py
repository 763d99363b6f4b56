"""
Settings for the mtlsdemo project: a Django app that runs behind nginx,
which verifies the client certificate and tells the app who the client
is through the X-Mtls-Identity* request headers.

Everything deployment-specific comes from the environment:

  DJANGO_SECRET_KEY     required; the app refuses to start without it
  MTLS_DJANGO_DB        required; path of Django's own SQLite database
  DJANGO_ALLOWED_HOSTS  comma-separated host names, default
                        api.example.test,localhost,127.0.0.1
  DJANGO_LOG_LEVEL      level of the log on stderr, default INFO
"""

import os

from django.core.exceptions import ImproperlyConfigured


def _required(name, why):
    value = os.environ.get(name, '')
    if not value:
        raise ImproperlyConfigured(
            'the environment variable %s is not set: %s' % (name, why))
    return value


# Signs the session and CSRF cookies.  A default in the source would be
# a key every copy of this project shares, so there is none.
SECRET_KEY = _required(
    'DJANGO_SECRET_KEY', 'set it to a long random string, e.g. the output '
    'of: /usr/bin/python3 -c "import secrets; print(secrets.token_hex(32))"')

# Never True in front of real clients: error pages would show settings
# and request headers, identity headers included.
DEBUG = False

# Django answers only for these Host values; nginx passes the client's
# Host through (proxy_set_header Host $host).
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get(
        'DJANGO_ALLOWED_HOSTS',
        'api.example.test,localhost,127.0.0.1').split(',') if h.strip()
]

INSTALLED_APPS = [
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'whoami',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    # Must come after AuthenticationMiddleware: it replaces the
    # request.user that one sets up.
    'whoami.auth.MtlsIdentityMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
]

# Only the header-based backend: no password logins at all, and no user
# is ever created because a header named it (see whoami/auth.py).
AUTHENTICATION_BACKENDS = ['whoami.auth.MtlsIdentityBackend']

ROOT_URLCONF = 'mtlsdemo.urls'
WSGI_APPLICATION = 'mtlsdemo.wsgi.application'

# Django's own tables (users, groups, the echo counter).  Not the
# allowlist nginx reads: that one lives in PostgreSQL.  Kept out of the
# source tree so that tests and demos never share or leave a database.
DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': _required(
            'MTLS_DJANGO_DB', 'set it to the path of the SQLite file '
            'Django should use, e.g. /tmp/mtlsdemo/db.sqlite3'),
        # Two gunicorn workers share the file; wait for a lock rather
        # than fail at once.
        'OPTIONS': {'timeout': 20},
    }
}
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'

# No template is rendered; every page, errors included, is JSON.
TEMPLATES = []
CSRF_FAILURE_VIEW = 'whoami.views.csrf_failure'

LANGUAGE_CODE = 'en-us'
TIME_ZONE = 'UTC'
USE_I18N = False
USE_TZ = True

# --- Behind the proxy -------------------------------------------------

# request.is_secure() is True only when this header says https.  Safe
# because nginx always sets it itself (proxy_set_header
# X-Forwarded-Proto $scheme), replacing whatever the client sent, and
# because the app listens on 127.0.0.1 only, so nothing but nginx can
# reach it.
SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https')

# Build URLs from Host (which ALLOWED_HOSTS checks), not from
# X-Forwarded-Host / X-Forwarded-Port, which a client could send.
USE_X_FORWARDED_HOST = False
USE_X_FORWARDED_PORT = False

# nginx terminates TLS and should do any http -> https redirect; doing
# it here too would also redirect requests that never went through it.
SECURE_SSL_REDIRECT = False

# --- Cookies ----------------------------------------------------------

# Session: the login made from the identity header is kept in a signed
# cookie, not in database rows, so clients that never send cookies back
# (most API clients) do not pile up sessions.  The cookie grants
# nothing by itself: the middleware logs the user out on every request
# whose identity header is missing or names someone else.
SESSION_ENGINE = 'django.contrib.sessions.backends.signed_cookies'
SESSION_COOKIE_AGE = 3600

# Send the cookies over HTTPS only, keep them away from JavaScript, and
# leave them off every cross-site request (a second line of defence
# against CSRF, after the token check).
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = 'Strict'
CSRF_COOKIE_SAMESITE = 'Strict'

# --- Response headers -------------------------------------------------

# Browsers must not guess a content type other than the one sent.
SECURE_CONTENT_TYPE_NOSNIFF = True
# No page of this app belongs in a frame.
X_FRAME_OPTIONS = 'DENY'
SECURE_REFERRER_POLICY = 'same-origin'
# HSTS is left to nginx, which owns the TLS side of the site.
SECURE_HSTS_SECONDS = 0

# --- Logging ----------------------------------------------------------

# Everything to stderr; gunicorn, systemd or the test harness decides
# where that goes.  Denied requests (403, 405) and identity headers
# naming unknown users are logged as warnings.
LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'formatters': {
        'plain': {
            'format': '%(asctime)s %(levelname)s %(name)s: %(message)s',
        },
    },
    'handlers': {
        'stderr': {
            'class': 'logging.StreamHandler',
            'stream': 'ext://sys.stderr',
            'formatter': 'plain',
        },
    },
    'root': {
        'handlers': ['stderr'],
        'level': os.environ.get('DJANGO_LOG_LEVEL', 'INFO'),
    },
}
