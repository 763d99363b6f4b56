"""WSGI entry point: gunicorn loads mtlsdemo.wsgi:application."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mtlsdemo.settings')

application = get_wsgi_application()
