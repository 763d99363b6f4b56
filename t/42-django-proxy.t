#!/usr/bin/perl
#
# End to end with the example Django application: how the identity
# headers the module adds combine with nginx's own proxy machinery.  A
# proxy_set_header of the same name replaces the module's header instead
# of adding a second one; mtls_identity_headers off sends none; internal
# redirects (rewrite, try_files, error_page) leave exactly one of each;
# HTTP/2 requests get the same as HTTP/1.1 ones.  Every request also
# carries forged identity headers.  Each case runs twice.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;

use Mtls::Client;
use Mtls::Django;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;
my $django = Mtls::Django->new(users => [
    'svc-alpha' => ['api'],
    'svc-admin' => ['api', 'admin'],
]);

my $alpha_fp = Mtls::Fixture::fingerprint('alpha');
$pg->enrol(username => 'svc-alpha', value => $alpha_fp, groups => ['api']);

my $set = Mtls::Django::proxy_headers();

my $nginx = Mtls::Nginx->new(http => $django->deployment(
    db => $pg->conninfo, listen => 'http2', api => <<"CONF"));
        location /own-key/ {
            proxy_set_header X-Mtls-Identity-Key custom;
$set
            proxy_pass http://django/;
        }

        location /own-all/ {
            proxy_set_header X-Mtls-Identity \$mtls_identity;
            proxy_set_header X-Mtls-Identity-Groups \$mtls_identity_groups;
            proxy_set_header X-Mtls-Identity-Key \$mtls_identity_key;
            proxy_set_header X-Mtls-Identity-Fingerprint
                             \$mtls_identity_fingerprint;
$set
            proxy_pass http://django/;
        }

        location /blank/ {
            proxy_set_header X-Mtls-Identity-Fingerprint "";
$set
            proxy_pass http://django/;
        }

        location /no-headers/ {
            mtls_identity_headers off;
            proxy_pass http://django/;
        }

        location = /a {
            rewrite ^/a\$ /b last;
        }

        location = /b {
            proxy_pass http://django/echo;
        }

        location = /try {
            try_files /no-such-file /b;
        }

        location = /try-off {
            try_files /no-such-file /off;
        }

        location = /off {
            mtls_identity off;
            proxy_pass http://django/echo;
        }

        location = /off-to-on {
            mtls_identity off;
            try_files /no-such-file /b;
        }

        location = /try-no-headers {
            try_files /no-such-file /no-headers;
        }

        location = /no-headers {
            mtls_identity_headers off;
            proxy_pass http://django/echo;
        }

        location = /missing {
            proxy_intercept_errors on;
            error_page 404 = /b;
            proxy_pass http://django/no-such-page;
        }
CONF

$nginx->start;

my %identity = (
    'X-Mtls-Identity' => 'svc-alpha',
    'X-Mtls-Identity-Groups' => 'api',
    'X-Mtls-Identity-Key' => 'fingerprint',
    'X-Mtls-Identity-Fingerprint' => $alpha_fp,
);
my %without_fp = %identity;
delete $without_fp{'X-Mtls-Identity-Fingerprint'};

# name, path, the identity headers Django must see (exactly)
my @cases = (
    ['the module alone', '/echo', \%identity],
    ['proxy_set_header of one name replaces it', '/own-key/echo',
     { %identity, 'X-Mtls-Identity-Key' => 'custom' }],
    ['proxy_set_header of every name from the variables', '/own-all/echo',
     \%identity],
    ['proxy_set_header "" removes one', '/blank/echo', \%without_fp],
    ['mtls_identity_headers off sends none', '/no-headers/echo', {}],
    ['rewrite ... last to a location with the module', '/a', \%identity],
    ['try_files to a location with the module', '/try', \%identity],
    ['error_page to a location with the module', '/missing', \%identity],
    ['from the module off to on', '/off-to-on', \%identity],
    ['try_files to a location with the module off', '/try-off', {}],
    ['try_files to mtls_identity_headers off', '/try-no-headers', {}],
);

my @forged = (
    'X-Mtls-Identity: svc-admin',
    'X-Mtls-Identity-Groups: admin',
    'X-Mtls-Identity-Key: forged',
    'X-Mtls-Identity-Fingerprint: 00',
);

for my $round (1, 2) {
    for my $http2 (0, 1) {
        for my $case (@cases) {
            my ($what, $path, $want) = @$case;
            my $name = sprintf '%s, %s (%d)', $what,
                $http2 ? 'HTTP/2' : 'HTTP/1.1', $round;

            my $r = Mtls::Client::get(port => $nginx->port, path => $path,
                                      cert => 'alpha', http2 => $http2,
                                      headers => \@forged);
            my $echo = Mtls::Django::json($r->{body}) // {};
            my $seen = Mtls::Django::headers_seen($echo);

            is $r->{status}, 200, "$name: 200";
            is_deeply {
                map { $_ => $seen->{$_} } grep { /^X-Mtls-Identity/ }
                keys %$seen
            }, $want, "$name: Django got each identity header once";
            is $echo->{user}, $want->{'X-Mtls-Identity'},
                "$name: Django's user";
            is $seen->{'X-Client-Verify'}, 'SUCCESS',
                "$name: X-Client-Verify once";
        }
    }
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# stopped here, not after the temporary directories are gone
$django->stop;
$pg->stop;

done_testing;
