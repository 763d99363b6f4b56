#!/usr/bin/perl
#
# The database as a dependency that fails: a worker never waits on it, a
# slow or absent database gets a clean 503 within the timeout, and a
# database that comes back is used again without reloading nginx.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep time);

use Mtls::Client;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;

$pg->enrol(username => 'svc-alpha',
           value => Mtls::Fixture::expect('alpha')->{fingerprint}[0],
           groups => ['api']);
$pg->enrol(username => 'svc-latin',
           value => Mtls::Fixture::expect('t61')->{fingerprint}[0]);

my $port = $echo->port;

sub config {
    my ($db, $options) = @_;

    return <<"CONF";
    mtls_identity_db "$db" $options;

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'optional') ]}
        add_header X-Id \$mtls_identity always;
        add_header X-Reason \$mtls_identity_reason always;

        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }

        location /plain {
            return 200 "plain\\n";
        }
    }
CONF
}

my $nginx = Mtls::Nginx->new(http => config(
    $pg->conninfo, 'connections=1 queue=1 timeout=2s connect_timeout=1s'));

$nginx->start;

sub ask {
    my (%o) = @_;

    return Mtls::Client::get(port => $nginx->port, cert => 'alpha', %o);
}

sub spawn {
    my (%o) = @_;

    return Mtls::Client::spawn(port => $nginx->port, cert => 'alpha', %o);
}

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }

# holds an exclusive lock on the revocation table for some seconds, in a
# psql process of its own; returns once the lock is taken
sub hold_lock {
    my ($seconds) = @_;
    my $pid = fork // die "fork: $!";

    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec($pg->psql_command('-c',
            'BEGIN; LOCK TABLE mtls_identity.revocation IN ACCESS EXCLUSIVE'
            . " MODE; SELECT pg_sleep($seconds); COMMIT;"))
            or POSIX::_exit(1);
    }

    for (1 .. 100) {
        last if $pg->value("SELECT count(*) FROM pg_locks l JOIN pg_class c"
                           . " ON c.oid = l.relation WHERE c.relname ="
                           . " 'revocation' AND l.mode ="
                           . " 'AccessExclusiveLock' AND l.granted");
        sleep 0.05;
    }

    return $pid;
}

for my $round (1, 2) {
    my $r = ask();
    is $r->{status}, 200, "the database answers ($round)";
    is header($r, 'X-Id'), 'svc-alpha', "  svc-alpha ($round)";
}

# a T61String subject with raw bytes 0xff 0xfe: converted to UTF-8 before
# any query, so the lookup neither fails nor reads as "not revoked"
my $r = ask(cert => 't61');
is $r->{status}, 200, 'a Latin-1 subject is looked up, not refused';
is header($r, 'X-Id'), 'svc-latin', '  and maps to its row';

# a lookup held by a lock: the worker serves others meanwhile
{
    my $lock = hold_lock(1.5);
    my $held = spawn();

    sleep 0.2;
    my $started = time;
    my $plain = Mtls::Client::get(port => $nginx->port, path => '/plain');
    my $took = time - $started;

    is $plain->{status}, 200, 'a location without the module answers';
    cmp_ok $took, '<', 0.5,
        '  at once, while a lookup waits on the database';

    my $result = Mtls::Client::collect($held);
    waitpid $lock, 0;

    is $result->{status}, 200, 'the held lookup completes once released';
    is header($result, 'X-Id'), 'svc-alpha', '  with the right identity';
    cmp_ok $result->{seconds}, '>', 1, '  after the lock was released';
}

# one connection, a queue of one: a third request is refused at once
{
    my $lock = hold_lock(1.5);
    my $first = spawn();
    sleep 0.2;
    my $second = spawn();
    sleep 0.2;

    my $third = ask();
    is $third->{status}, 503, 'a full queue refuses with 503';
    cmp_ok $third->{seconds}, '<', 0.5, '  at once';
    is header($third, 'X-Reason'), 'db_unavailable', '  as db_unavailable';

    is Mtls::Client::collect($first)->{status}, 200,
        'the request on the connection completes';
    is Mtls::Client::collect($second)->{status}, 200,
        'the queued request completes after it';
    waitpid $lock, 0;
}

# a lookup slower than the timeout: 503 at the timeout, then recovery
{
    my $lock = hold_lock(4);
    my $slow = ask();

    is $slow->{status}, 503, 'a lookup past the timeout is 503';
    cmp_ok $slow->{seconds}, '<', 3, '  within the timeout';
    is header($slow, 'X-Reason'), 'db_unavailable', '  db_unavailable';

    waitpid $lock, 0;
    sleep 0.5;

    is ask()->{status}, 200, 'the next lookup after the lock succeeds';
}

# the client gives up while its lookup waits
{
    my $lock = hold_lock(1.5);
    my $gone = ask(timeout => 0.5);

    is $gone->{status}, 0, 'a client that gives up gets nothing';
    waitpid $lock, 0;
    sleep 0.2;

    is ask()->{status}, 200,
        'the connection is drained and serves the next request';
}

# the database's connections are killed from PostgreSQL
{
    my $killed = $pg->value("SELECT count(pg_terminate_backend(pid))"
                            . " FROM pg_stat_activity WHERE"
                            . " application_name = 'nginx mtls_identity'");
    cmp_ok $killed, '>=', 1, 'nginx holds a connection to terminate';
    sleep 0.5;

    for my $round (1, 2) {
        is ask()->{status}, 200,
            "after pg_terminate_backend the next request succeeds ($round)";
    }
}

# the database stops and comes back
{
    $pg->stop('immediate');

    for my $round (1, 2) {
        my $down = ask();
        is $down->{status}, 503, "database down: 503 ($round)";
        is header($down, 'X-Reason'), 'db_unavailable',
            "  db_unavailable ($round)";
        cmp_ok $down->{seconds}, '<=', 2.5, "  within the timeout ($round)";
        is Mtls::Echo::parse($down->{body})->{'x-mtls-identity'}, undef,
            "  no identity reaches anyone ($round)";
    }

    sleep 3;
    $pg->start;
    sleep 2.1;

    for my $round (1, 2) {
        my $back = ask();
        is $back->{status}, 200,
            "back: the first requests 2 s later succeed ($round)";
        is header($back, 'X-Id'), 'svc-alpha', "  as svc-alpha ($round)";
    }
}

my $log = $nginx->error_log;
like $log, qr/\[error\].*mtls identity: .*PostgreSQL/,
    'a failed database is logged at error';
like $log, qr/\[info\].*access denied \(db_unavailable\), certificate [0-9a-f]{64}/,
    'the denial names db_unavailable and the fingerprint';
unlike $log, qr/password/i, 'no password in the log';

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# a server that accepts connections and never speaks: connect timeout
{
    my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1',
                                     LocalPort => 0, Proto => 'tcp',
                                     ReuseAddr => 1) or die $!;
    my $mute_port = $mute->sockport;

    my $stuck = Mtls::Nginx->new(http => config(
        "host=127.0.0.1 port=$mute_port dbname=x user=x",
        'connect_timeout=300ms timeout=1s'));
    $stuck->start;

    my $t = Mtls::Client::get(port => $stuck->port, cert => 'alpha');
    is $t->{status}, 503, 'a database that never answers: 503';
    cmp_ok $t->{seconds}, '<', 2, '  within the timeout';

    $stuck->stop;
    like $stuck->error_log, qr/connecting to PostgreSQL timed out/,
        'the connect timeout is logged';
    is_deeply [$stuck->problems], [], '  and nothing worse';
}

done_testing;
