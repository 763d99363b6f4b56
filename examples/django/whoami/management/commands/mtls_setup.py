"""
manage.py mtls_setup: create Django users and groups for the demo.

    manage.py mtls_setup --user alice --groups api,reports \\
                         --user bob --groups api \\
                         --user carol --inactive

Each --user starts a new user; the --groups and --inactive after it
apply to that user.  Running the same command again changes nothing.
"""

import argparse
from urllib.parse import unquote

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, transaction

HELP = """\
Create or update Django users for identities that nginx forwards in
X-Mtls-Identity, and put each in exactly the groups listed.  Each --user
NAME starts a new user; --groups and --inactive that follow it apply to
that user.  Example: --user alice --groups api,reports --user bob
--groups api --user carol --inactive.  Missing users and groups are
created; a user's groups are replaced by the ones listed (none when
--groups is left out).  New users get an unusable password: they can
only log in through the identity header.  Run "manage.py migrate" first."""


def _users(namespace):
    return list(getattr(namespace, 'users', None) or [])


class _User(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        users = _users(namespace)
        users.append({'name': value, 'groups': [], 'active': True})
        setattr(namespace, 'users', users)


class _Groups(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        users = _users(namespace)
        if not users:
            parser.error('%s must follow a --user' % option_string)
        # Same rule as the X-Mtls-Identity-Groups header: split on
        # commas, then percent-decode each name (%2C for a comma).
        users[-1]['groups'] = [unquote(g) for g in value.split(',') if g]
        setattr(namespace, 'users', users)


class _Inactive(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        users = _users(namespace)
        if not users:
            parser.error('%s must follow a --user' % option_string)
        users[-1]['active'] = False
        setattr(namespace, 'users', users)


class Command(BaseCommand):
    help = HELP

    def add_arguments(self, parser):
        parser.add_argument(
            '--user', action=_User, metavar='NAME',
            help='the username, exactly as nginx sends it')
        parser.add_argument(
            '--groups', action=_Groups, metavar='G1,G2',
            help='comma-separated groups of the preceding --user; '
                 'write a comma inside a name as %%2C, a %% as %%25')
        parser.add_argument(
            '--inactive', action=_Inactive, nargs=0,
            help='mark the preceding --user inactive: the header then '
                 'no longer logs it in')

    def handle(self, *args, **options):
        users = options.get('users') or []
        if not users:
            raise CommandError('nothing to do: give at least one --user')
        for spec in users:
            if not spec['name'] or len(spec['name']) > 150:
                raise CommandError('bad username %r' % spec['name'])
        try:
            with transaction.atomic():
                for spec in users:
                    self._apply(spec)
        except DatabaseError as exc:
            raise CommandError(
                '%s (has "manage.py migrate" been run?)' % exc)

    def _apply(self, spec):
        user, created = User.objects.get_or_create(username=spec['name'])
        if created:
            user.set_unusable_password()
        user.is_active = spec['active']
        user.save()
        groups = [Group.objects.get_or_create(name=name)[0]
                  for name in spec['groups']]
        user.groups.set(groups)
        self.stdout.write('%s %r: groups %r%s' % (
            'created' if created else 'updated', user.username,
            sorted(g.name for g in groups),
            '' if user.is_active else ', inactive'))
