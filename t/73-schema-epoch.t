#!/usr/bin/perl
#
# The cache follows one copy of the schema: when the schema is dropped and
# recreated, or nginx is reloaded onto another database, every cached
# answer of the old one goes, even when the new change version is already
# past the one the cache has seen.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp ();
use Test::More;
use Time::HiRes qw(sleep);

use Mtls::Client;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;
my $other = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;

sub fp { Mtls::Fixture::expect($_[0])->{fingerprint}[0] }

sub config {
    my ($db) = @_;

    return <<"CONF";
    mtls_identity_db "@{[ $db->conninfo ]}";
    mtls_identity_cache zone=mtls:1m ttl=300s negative_ttl=10s;
    mtls_identity_poll 1s;

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'on', trust => 'trust-ab.pem') ]}
        add_header X-Id \$mtls_identity always;
        add_header X-Cache \$mtls_identity_cache always;

        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
}

sub ask {
    my ($cert) = @_;
    my $r = Mtls::Client::get(port => $_[1], cert => $cert);
    return ($r->{status}, $r->{headers}{'x-id'}[0] // '',
            $r->{headers}{'x-cache'}[0] // '');
}

# some history, then alpha: version 3 in the first database
$pg->enrol(username => "old-$_", value => sprintf('%064x', $_)) for 1 .. 2;
$pg->enrol(username => 'svc-alpha', value => fp('alpha'));

my $nginx = Mtls::Nginx->new(http => config($pg));
$nginx->start;
sleep 1.5;

ask('alpha', $nginx->port);
my @r = ask('alpha', $nginx->port);
is_deeply \@r, [200, 'svc-alpha', 'hit'], 'alpha is allowed and cached';

# the schema is dropped and recreated, and the allowlist loaded again
# without alpha, in one psql session (as a deployment script would run
# it): more statements than before, so the version moves on
{
    my $script = File::Temp->new(SUFFIX => '.sql');
    print $script "DROP SCHEMA mtls_identity CASCADE;\n";
    open my $schema, '<', $Mtls::Pg::SCHEMA or die $!;
    print $script $_ while <$schema>;
    close $schema;
    printf $script "INSERT INTO mtls_identity.identity (username, key_kind,"
        . " key_value) VALUES ('new-%d', 'fingerprint', '%064x');\n",
        $_, 100 + $_ for 1 .. 5;
    close $script;
    chmod 0644, $script->filename;
    $pg->sql_file($script->filename);
}
sleep 3;    # several polls

for my $round (1, 2) {
    @r = ask('alpha', $nginx->port);
    isnt $r[0], 200,
        "recreated schema without alpha: alpha refused ($round)";
    is $r[1], '', "  and named by no identity ($round)";
    sleep 1;
}

# reloaded onto another database whose version is higher; the zone,
# its entries and its version survive the reload
$pg->sql('TRUNCATE mtls_identity.identity');
$pg->enrol(username => 'svc-beta', value => fp('beta'));
sleep 1.5;
ask('beta', $nginx->port);
@r = ask('beta', $nginx->port);
is_deeply \@r, [200, 'svc-beta', 'hit'], 'beta is allowed and cached';

$other->enrol(username => "x-$_", value => sprintf('%064x', 200 + $_))
    for 1 .. 20;
$nginx->reload(http => config($other));
sleep 2.5;

@r = ask('beta', $nginx->port);
isnt $r[0], 200, 'another database without beta: beta refused';
isnt $r[2], 'hit', "  not from the first database's cache";

# a database made by the first version of the schema, without an epoch:
# the module says what to do, and applying the schema again fixes it
$other->sql('ALTER TABLE mtls_identity.state DROP COLUMN epoch;'
            . ' DELETE FROM mtls_identity.schema_version WHERE version = 2');
$nginx->reload(http => config($other));
sleep 1.5;

@r = ask('beta', $nginx->port);
is $r[0], 503, 'a schema of version 1: 503';
like $nginx->error_log,
    qr/\[error\].*the mtls_identity schema is older than version 2: apply sql\/schema\.sql again/,
    '  and the log says to apply the schema again';

$other->sql_file($Mtls::Pg::SCHEMA);
$other->enrol(username => 'svc-beta', value => fp('beta'));

my $fixed;
for (1 .. 40) {
    @r = ask('beta', $nginx->port);
    last if ($fixed = $r[0] == 200);
    sleep 0.1;
}
ok $fixed, 'after applying the schema again, lookups work without a reload';

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
