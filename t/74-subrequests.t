#!/usr/bin/perl
#
# nginx runs no access-phase handler for a subrequest, and a subrequest
# carries the main request's headers.  A location with the module on
# still decides for an SSI include, an auth_request or a mirror that
# reaches it, from what the main request's lookup found: a client allowed
# in one location (group api) does not reach a location that requires
# group admin through a subrequest.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;

use Mtls::Client;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $dir = tempdir('mtls-ssi-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$dir/page";
open my $fh, '>', "$dir/page/index.html" or die $!;
print $fh qq{<!--# include virtual="/admin/users" -->\n};
close $fh;
chmod 0755, $dir, "$dir/page";
chmod 0644, "$dir/page/index.html";

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;

$pg->enrol(username => 'svc-alpha',
           value => Mtls::Fixture::expect('alpha')->{fingerprint}[0],
           groups => ['api']);

my $nginx = Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}";

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'on') ]}
        mtls_identity on;

        location /page {
            ssi on;
            root $dir;
        }

        location /admin {
            mtls_identity_require_group admin;
            proxy_pass http://127.0.0.1:$port;
        }

        location /guarded {
            auth_request /admin/check;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
$nginx->start;

for my $round (1, 2) {
    my $direct = Mtls::Client::get(port => $nginx->port, cert => 'alpha',
                                   path => '/admin/users');
    is $direct->{status}, 403, "svc-alpha is refused at /admin ($round)";

    my $page = Mtls::Client::get(port => $nginx->port, cert => 'alpha',
                                 path => '/page/');
    unlike $page->{body}, qr/x-mtls-identity=svc-alpha/,
        "an SSI include does not reach /admin as svc-alpha ($round)";

    my $guarded = Mtls::Client::get(port => $nginx->port, cert => 'alpha',
                                    path => '/guarded');
    is $guarded->{status}, 403,
        "auth_request to /admin does not pass svc-alpha ($round)";
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
