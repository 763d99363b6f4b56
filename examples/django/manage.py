#!/usr/bin/python3
"""Django's command-line utility for the mtlsdemo project.

Run it with Debian's interpreter, /usr/bin/python3, which has Django.
"""

import os
import sys


def main():
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mtlsdemo.settings')
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    # Load the settings now, so that a missing environment variable is
    # reported in one line instead of as "Unknown command" or a
    # traceback further on.
    try:
        settings.INSTALLED_APPS
    except ImproperlyConfigured as exc:
        sys.exit('manage.py: %s' % exc)
    execute_from_command_line(sys.argv)


if __name__ == '__main__':
    main()
