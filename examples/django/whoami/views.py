"""
JSON views: what the app sees of the client, and one view that does its
own authorization.
"""

from urllib.parse import unquote

from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods

from .models import EchoHit

# The Django group a user needs for /reports.
REPORTS_GROUP = 'reports'


def _username(request):
    user = request.user
    return user.get_username() if user.is_authenticated else None


def forwarded_groups(request):
    """The groups nginx forwarded in X-Mtls-Identity-Groups.

    Comma-separated; inside a name, '%', ',', '"', '\\' and control
    bytes arrive percent-encoded, so each element is decoded on its own
    after splitting.
    """
    value = request.META.get('HTTP_X_MTLS_IDENTITY_GROUPS', '')
    if not value:
        return []
    return [unquote(name) for name in value.split(',')]


def _error(status, message):
    return JsonResponse({'error': message}, status=status)


@require_GET
def index(request):
    return JsonResponse({
        'app': 'mtlsdemo',
        'endpoints': ['/whoami', '/echo', '/echo-count', '/reports'],
    })


@require_GET
def whoami(request):
    user = request.user
    groups = []
    if user.is_authenticated:
        groups = sorted(user.groups.values_list('name', flat=True))
    return JsonResponse({
        'user': _username(request),
        'authenticated': user.is_authenticated,
        # Authorization in this app uses these, Django's own groups.
        'groups': groups,
        # Shown for comparison only: what nginx's allowlist says.
        'forwarded_groups': forwarded_groups(request),
        'key': request.META.get('HTTP_X_MTLS_IDENTITY_KEY'),
        'fingerprint': request.META.get('HTTP_X_MTLS_IDENTITY_FINGERPRINT'),
        'secure': request.is_secure(),
    })


# A test aid, not something to deploy: it shows every request header
# and counts the requests that reached the app.  Any method is
# accepted and CSRF is not checked, so that whatever nginx lets through
# is counted; it changes nothing except that counter.
@csrf_exempt
def echo(request):
    EchoHit.objects.create()
    seen = {k: v for k, v in request.META.items() if k.startswith('HTTP_')}
    if 'REMOTE_USER' in request.META:
        seen['REMOTE_USER'] = request.META['REMOTE_USER']
    seen['user'] = _username(request)
    return JsonResponse(seen)


@require_GET
def echo_count(request):
    return JsonResponse({'count': EchoHit.objects.count()})


# This view checks authorization itself rather than resting on the
# proxy alone, so a mistake in the proxy configuration does not open it.
#
# Order of the checks: the method first (405), then CSRF for a POST,
# then the user.  CsrfViewMiddleware would reject a PUT with 403 before
# any method check could run, so it is told to skip this view
# (csrf_exempt) and the same check runs inside, after the method check
# (csrf_protect).  POST is therefore still CSRF-protected: a client
# sends the csrftoken cookie, the same value in an X-CSRFToken header,
# and a Referer on this host (Django 3.2 insists on one over HTTPS).
# An allowed GET sets the cookie.
@csrf_exempt
@require_http_methods(['GET', 'POST'])
@csrf_protect
def reports(request):
    if not request.user.is_authenticated:
        # An API answers 403, not a redirect to a login page.
        return _error(403, 'authentication required')
    if not request.user.groups.filter(name=REPORTS_GROUP).exists():
        return _error(403, 'membership of group %r required'
                      % REPORTS_GROUP)
    get_token(request)
    return JsonResponse({'user': _username(request), 'reports': []})


def csrf_failure(request, reason=''):
    return _error(403, 'CSRF check failed: %s' % reason)


def bad_request(request, exception):
    return _error(400, 'bad request')


def permission_denied(request, exception):
    return _error(403, 'forbidden')


def not_found(request, exception):
    return _error(404, 'not found')


def server_error(request):
    return _error(500, 'server error')
