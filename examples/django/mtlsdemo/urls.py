from django.urls import path

from whoami import views

urlpatterns = [
    path('', views.index),
    path('whoami', views.whoami),
    path('echo', views.echo),
    path('echo-count', views.echo_count),
    path('reports', views.reports),
]

# Errors as JSON too, instead of Django's HTML pages.
handler400 = 'whoami.views.bad_request'
handler403 = 'whoami.views.permission_denied'
handler404 = 'whoami.views.not_found'
handler500 = 'whoami.views.server_error'
