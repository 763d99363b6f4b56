#!/usr/bin/perl
#
# Smaller hostile inputs, one block each:
#   - a password written in an unquoted conninfo is never repeated by
#     nginx -t;
#   - a conninfo value libpq would refuse only when connecting fails
#     nginx -t;
#   - a username with a leading or trailing space (a row written after the
#     schema's checks were dropped) never reaches the upstream as another
#     name, though HTTP parsers trim the spaces around a header value;
#   - one lookup too big for the zone evicts nothing;
#   - a NOTIFY on the channel from any role does not turn the cache off.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep);

use Mtls::Client;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

sub fp { Mtls::Fixture::expect($_[0])->{fingerprint}[0] }

# --- nginx -t and the conninfo ------------------------------------------

{
    my $nginx = Mtls::Nginx->new;
    my ($ok, $out) = $nginx->test_config(http =>
        '    mtls_identity_db host=127.0.0.1 password=S3cretPW dbname=app;');
    ok !$ok, 'an unquoted conninfo fails nginx -t';
    unlike $out, qr/S3cretPW/, '  without printing the password';
    unlike $nginx->error_log, qr/S3cretPW/, '  nor logging it';

    ($ok, $out) = $nginx->test_config(http =>
        '    mtls_identity_db "host=127.0.0.1 dbname=app sslmode=bogus";');
    ok !$ok, 'a conninfo libpq cannot use (sslmode=bogus) fails nginx -t'
        or diag $out;
}

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;

$pg->enrol(username => "svc-$_", value => fp($_)) for qw(alpha beta rsa);

my $nginx = Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}";
    mtls_identity_cache zone=mtls:32k ttl=60s negative_ttl=60s;

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'on', trust => 'trust-ab.pem') ]}
        add_header X-Cache \$mtls_identity_cache always;

        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
$nginx->start;
sleep 1;

sub cache_of {
    my ($cert) = @_;
    return Mtls::Client::get(port => $nginx->port, cert => $cert)
        ->{headers}{'x-cache'}[0] // '';
}

# --- a username with spaces around it -----------------------------------

$pg->sql('ALTER TABLE mtls_identity.identity'
         . ' DROP CONSTRAINT identity_username_clean');
$pg->enrol(username => ' admin ', value => fp('utf8'));

for my $round (1, 2) {
    my $r = Mtls::Client::get(port => $nginx->port, cert => 'utf8');
    isnt Mtls::Echo::parse($r->{body})->{'x-mtls-identity'} // '', 'admin',
        "the row \" admin \" never reaches the upstream as admin ($round)";
}

# --- one oversized lookup -----------------------------------------------

cache_of($_) for qw(alpha beta rsa);
is join(' ', map { cache_of($_) } qw(alpha beta rsa)), 'hit hit hit',
    'three certificates are cached';

$pg->enrol(username => 'big', value => fp('prefix'),
           sql => { groups => "ARRAY(SELECT 'group-number-' || i"
                              . " FROM generate_series(1, 1500) i)" });
cache_of('prefix') for 1, 2;

is join(' ', map { cache_of($_) } qw(alpha beta rsa)), 'hit hit hit',
    'a lookup that cannot be cached evicts nothing';

# --- a forged notification ----------------------------------------------

$pg->sql('CREATE ROLE outsider LOGIN');
Mtls::Nginx::run_capture('psql', '-X', '-q', '-h', '127.0.0.1', '-p',
    $pg->port, '-U', 'outsider', '-d', 'postgres', '-c',
    "NOTIFY mtls_identity, '9223372036854775807 *'");
sleep 0.3;

cache_of('alpha');
is cache_of('alpha'), 'hit',
    'a NOTIFY from a role without any grant does not turn the cache off';

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
