#!/usr/bin/perl
#
# The shared cache and the changes PostgreSQL pushes into it: hits touch
# no database, a committed revocation denies the next request on open
# keep-alive and HTTP/2 connections and on a second nginx, a listener that
# lost its connection catches up, stale answers are bounded, the zone
# survives a reload and a full zone evicts.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp ();
use Test::More;
use Time::HiRes qw(sleep time);

use Mtls::Client;
use Mtls::Dump;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new(settings => { log_statement => "'all'" });
my $echo = Mtls::Echo->new;
my $slow = Mtls::Dump->new(delay => 2);

sub fp { Mtls::Fixture::expect($_[0])->{fingerprint}[0] }

my $issuer = Mtls::Fixture::expect('alpha')->{issuer}[0];

for my $name (qw(alpha serial-10 serial-100100 utf8 rsa)) {
    $pg->enrol(username => "svc-$name", value => fp($name),
               groups => ['api']);
}

my ($port, $slow_port) = ($echo->port, $slow->port);

sub config {
    my (%o) = @_;
    my $zone = $o{zone} // '1m';

    return <<"CONF";
    mtls_identity_db "@{[ $pg->conninfo ]}" timeout=2s;
    mtls_identity_cache zone=mtls:$zone ttl=60s negative_ttl=60s;
    mtls_identity_poll 1s;

    server {
        listen 127.0.0.1:%%PORT%% ssl http2;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'optional', trust => 'trust-ab.pem') ]}
        keepalive_timeout 60s;

        mtls_identity on;

        add_header X-Id \$mtls_identity always;
        add_header X-Reason \$mtls_identity_reason always;
        add_header X-Cache \$mtls_identity_cache always;
        add_header X-Conn \$connection always;

        location / {
            proxy_pass http://127.0.0.1:$port;
        }

        location /slow {
            proxy_pass http://127.0.0.1:$slow_port;
        }

        location /stale {
            mtls_identity_on_db_error stale=3s;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
}

my $nginx = Mtls::Nginx->new(http => config());
$nginx->start;

sub ask {
    my ($cert, $path, %o) = @_;

    return Mtls::Client::get(port => ($o{nginx} // $nginx)->port,
                             path => $path // '/', cert => $cert, %o);
}

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }

# waits until a condition holds, at most `seconds`; returns how long
sub within {
    my ($seconds, $check) = @_;
    my $start = time;

    while (time - $start < $seconds) {
        return time - $start if $check->();
        sleep 0.05;
    }

    return undef;
}

# the listener connects at start-up; hits wait for it
ok defined within(5, sub { header(ask('alpha'), 'X-Cache') eq 'hit' }),
    'a repeated lookup is served from the cache';

for my $round (1, 2) {
    my $r = ask('serial-10');
    like header($r, 'X-Cache'), qr/^(miss|hit)$/, "first lookup ($round)";
    is header(ask('serial-10'), 'X-Cache'), 'hit',
        "the next one is a hit ($round)";
    is header(ask('serial-10'), 'X-Id'), 'svc-serial-10',
        "  with the identity ($round)";
}

# the twin from CA B never reads alpha's entry
for my $round (1, 2) {
    my $r = ask('alpha-b');
    is $r->{status}, 403, "the same names from CA B: 403 ($round)";
    is header($r, 'X-Reason'), 'unknown', "  unknown ($round)";
}

# a hit touches no database: the statement log shows no lookup for it
{
    ask('utf8');
    ask('utf8');

    my $lookups = sub {
        my @lines = $pg->server_log =~ /execute mtls_identity_lookup/g;
        return scalar @lines;
    };

    my $before = $lookups->();
    is header(ask('utf8'), 'X-Cache'), 'hit', 'hit' for 1 .. 5;
    is $lookups->(), $before, 'five hits run no lookup';
}

# a revocation committed while connections stay open
{
    ask('serial-100100');
    is header(ask('serial-100100'), 'X-Cache'), 'hit', 'warm before';

    my $h1 = Mtls::Client::requests(
        port => $nginx->port, cert => 'serial-100100',
        urls => ['/slow', '/'], spawn => 1);
    my $h2 = Mtls::Client::requests(
        port => $nginx->port, cert => 'serial-100100', http2 => 1,
        urls => ['/slow', '/'], spawn => 1);

    sleep 0.5;
    my $committed = time;
    $pg->sql("INSERT INTO mtls_identity.revocation (fingerprint)"
             . " VALUES ('" . fp('serial-100100') . "')");

    my $took = within(1, sub { ask('serial-100100')->{status} == 403 });
    ok defined $took, 'a new connection is denied within a second';
    diag sprintf 'revocation seen after %.0f ms', 1000 * ($took // 1);

    for my $run ([$h1, 'keep-alive HTTP/1.1'], [$h2, 'HTTP/2']) {
        my ($first, $second) = Mtls::Client::collect($run->[0]);

        is $first->{status}, 200, "$run->[1]: the request before passed";
        is header($first, 'X-Conn'), header($second, 'X-Conn'),
            "$run->[1]: both requests on one connection";
        is $second->{status}, 403,
            "$run->[1]: the next request on it is denied";
        is header($second, 'X-Reason'), 'revoked', "  revoked";
    }

    is header(ask('serial-100100'), 'X-Cache'), 'hit',
        'the denial itself is cached';

    $pg->sql("DELETE FROM mtls_identity.revocation");
    ok defined within(1, sub { ask('serial-100100')->{status} == 200 }),
        'undoing the revocation takes effect within a second too';
}

# allowlist changes are pushed the same way
{
    is ask('rsa')->{status}, 200, 'enabled';
    $pg->sql("UPDATE mtls_identity.identity SET enabled = false"
             . " WHERE username = 'svc-rsa'");
    ok defined within(1, sub {
        header(ask('rsa'), 'X-Reason') eq 'disabled' }),
        'disabling a row denies within a second';

    $pg->sql("UPDATE mtls_identity.identity SET enabled = true,"
             . " valid_until = now() WHERE username = 'svc-rsa'");
    ok defined within(1, sub {
        header(ask('rsa'), 'X-Reason') eq 'expired' }),
        'ending a grant denies within a second';

    $pg->sql("UPDATE mtls_identity.identity SET valid_until = NULL"
             . " WHERE username = 'svc-rsa'");
    ok defined within(1, sub { ask('rsa')->{status} == 200 }),
        'and restoring it allows again';
}

# a second nginx on the same database sees the same changes
{
    my $other = Mtls::Nginx->new(http => config());
    $other->start;

    ok defined within(5, sub {
        header(ask('serial-10', '/', nginx => $other), 'X-Cache') eq 'hit'
    }), 'the second nginx caches too';

    $pg->sql("INSERT INTO mtls_identity.revocation (issuer_dn, serial)"
             . " VALUES (" . $pg->quote($issuer) . ", '10')");

    ok defined within(1, sub {
        ask('serial-10', '/', nginx => $other)->{status} == 403 }),
        'a revocation reaches the second nginx within a second';
    ok defined within(1, sub { ask('serial-10')->{status} == 403 }),
        '  and the first';

    $pg->sql("DELETE FROM mtls_identity.revocation");
    $other->stop;
    is_deeply [$other->problems], [], 'the second nginx logged no alert';
}

# the listener's connection is killed; a revocation made meanwhile still
# takes effect once it is back, and entries it does not touch stay
{
    within(1, sub { ask('serial-10')->{status} == 200 });
    ask('utf8');
    is header(ask('utf8'), 'X-Cache'), 'hit', 'utf8 is cached';

    # hold the listener off: terminate it and revoke at once
    $pg->sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
             . " WHERE application_name = 'nginx mtls_identity listener';"
             . " INSERT INTO mtls_identity.revocation (fingerprint)"
             . " VALUES ('" . fp('serial-10') . "')");

    ok defined within(3, sub {
        header(ask('serial-10'), 'X-Reason') eq 'revoked' }),
        'a revocation made while the listener was away takes effect';

    ok defined within(3, sub { header(ask('utf8'), 'X-Cache') eq 'hit' }),
        'an entry no change touched is still cached';

    like $nginx->error_log, qr/listening for changes/,
        'the listener says when it listens again';

    $pg->sql("DELETE FROM mtls_identity.revocation");
}

# stale answers while the database is away, bounded by stale=
{
    ok defined within(2, sub { ask('alpha')->{status} == 200 }),
        'alpha allowed';
    ask('alpha', '/stale');

    $pg->stop('immediate');
    my $stopped = time;

    my $r = ask('alpha', '/stale');
    is $r->{status}, 200, 'database down: stale= serves the cached allow';
    is header($r, 'X-Cache'), 'stale', '  marked stale';
    is header($r, 'X-Reason'), 'ok', '  reason ok';
    is header($r, 'X-Id'), 'svc-alpha', '  as svc-alpha';

    $r = ask('alpha', '/');
    is $r->{status}, 503, 'a location without stale= answers 503';
    is header($r, 'X-Reason'), 'db_unavailable', '  db_unavailable';

    $r = ask('spaces', '/stale');
    is $r->{status}, 503, 'a certificate with nothing cached: 503';

    # stale= counts whole seconds from the last moment the answer was
    # known to be current: at the latest, when the database went away
    sleep 4.5 - (time - $stopped) if time - $stopped < 4.5;
    $r = ask('alpha', '/stale');
    is $r->{status}, 503, 'past stale= the answer is 503';

    $pg->start;
    ok defined within(4, sub { ask('alpha')->{status} == 200 }),
        'the database is back';
}

# a revoked certificate is never served stale
{
    ask('serial-100100', '/stale');
    $pg->sql("INSERT INTO mtls_identity.revocation (fingerprint)"
             . " VALUES ('" . fp('serial-100100') . "')");
    ok defined within(1, sub { ask('serial-100100')->{status} == 403 }),
        'revoked';

    $pg->stop('immediate');
    my $r = ask('serial-100100', '/stale');
    isnt $r->{status}, 200, 'a revoked certificate is never served stale';
    $pg->start;
    $pg->sql("DELETE FROM mtls_identity.revocation");
}

# the zone survives a reload
{
    ok defined within(4, sub { header(ask('utf8'), 'X-Cache') eq 'hit' }),
        'cached before the reload';
    ok $nginx->reload, 'reloaded';

    ok defined within(4, sub { header(ask('utf8'), 'X-Cache') ne '' }),
        'the new workers answer';
    ok defined within(4, sub { header(ask('utf8'), 'X-Cache') eq 'hit' }),
        'the entry survived the reload';
}

# a full zone evicts the least recently used, and never fails a request
{
    my $small = Mtls::Nginx->new(http => config(zone => '32k'));
    $small->start;

    # more certificates than the smallest zone holds, from CA A
    my $dir = File::Temp::tempdir('mtls-many-XXXXXX', TMPDIR => 1,
                                  CLEANUP => 1);
    my $f = $Mtls::Nginx::FIXTURES;
    my @certs;

    system("openssl req -new -key $f/alpha.key -subj /CN=many -out $dir/r.csr"
           . " 2>/dev/null") == 0 or die 'openssl req failed';

    for my $n (1 .. 150) {
        my $crt = "$dir/many-$n.crt";
        system("openssl x509 -req -in $dir/r.csr -CA $f/ca-a.crt"
               . " -CAkey $f/ca-a.key -set_serial " . (0x9000 + $n)
               . " -days 2 -out $crt 2>/dev/null") == 0
            or die 'openssl x509 failed';
        push @certs, $crt;
    }

    my ($failed, $misses) = (0, 0);

    for my $round (1, 2) {
        for my $crt (@certs) {
            my $r = ask($crt, '/', nginx => $small, key => "$f/alpha.key");
            $failed++ unless $r->{status} == 403;
            $misses++ if $round == 2 && header($r, 'X-Cache') eq 'miss';
        }
    }

    is $failed, 0, 'every request is answered while the zone is full';
    cmp_ok $misses, '>', 0,
        'the least recently used entries were evicted to make room';
    is header(ask($certs[-1], '/', nginx => $small, key => "$f/alpha.key"),
              'X-Cache'), 'hit', 'the most recent entry is kept';

    $small->stop;
    my @lines = grep { /cannot hold/ } split /\n/, $small->error_log;
    cmp_ok scalar @lines, '<=', 1, 'a full zone does not flood the log';
    is_deeply [$small->problems], [], 'and logs no alert';
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
