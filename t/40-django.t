#!/usr/bin/perl
#
# End to end with the example Django application behind nginx: headers a
# client forges under the names of the identity headers, or of other
# certificate headers, never reach Django, on any server or location
# that proxies to it, with or without a client certificate, over HTTP/1.1
# and HTTP/2, and however nginx is told to parse header names; among
# dozens of other headers, which all arrive intact; and on a connection
# that carries several requests.  Only the values the module and the
# configuration set arrive, once each.  What "arrives" is what Django's
# /echo view reports.  Each case runs twice.

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
    # a user the forged headers name: Django would log it in
    'svc-admin' => ['api', 'admin'],
]);

my $alpha_fp = Mtls::Fixture::fingerprint('alpha');
$pg->enrol(username => 'svc-alpha', value => $alpha_fp, groups => ['api']);

# every header a client might forge to pass for someone, or for a
# verified certificate
my @forged = (
    'X-Mtls-Identity: svc-admin',
    'X-Mtls-Identity-Key: fingerprint',
    'X-Mtls-Identity-Groups: admin',
    'X-Mtls-Identity-Fingerprint: 00',
    'X-Client-Verify: SUCCESS',
    'X-SSL-Client-S-DN: CN=svc-admin',
    'X-Forwarded-Client-Cert: '
        . 'Hash=00;URI=spiffe://example.test/ns/prod/sa/admin',
    'Client-Cert: :AAAA:',
    'Remote-User: svc-admin',
    'X-Remote-User: svc-admin',
    'x-mtls-identity: svc-admin2',
    'X-Mtls_Identity: svc-admin',
    'X-MTLS-IDENTITY-GROUPS: admin',
    'X-Mtls-Identity-Extra: svc-admin',
);

# what a forged value would leave behind if any part of it got through
my $forged_trace = qr/svc-admin|:AAAA:|Hash=00|admin|^00$/;

# the ways nginx can be told to read header names: by default a name
# with "_" is dropped; with underscores_in_headers it is kept; with
# ignore_invalid_headers off every name is kept
my @parsers = (
    ['default header parsing', ''],
    ['underscores_in_headers on', "    underscores_in_headers on;\n"],
    ['ignore_invalid_headers off', "    ignore_invalid_headers off;\n"],
);

sub config {
    my ($parsing) = @_;

    return $django->deployment(
        db => $pg->conninfo,
        listen => 'http2',
        http => $parsing,
        api => <<'CONF');
        location /off/ {
            mtls_identity off;
            proxy_pass http://django/;
        }
CONF
}

# one nginx for each way of parsing, all at once
my %nginx = map {
    my $nginx = Mtls::Nginx->new(http => config($_->[1]));
    $nginx->start;
    ($_->[0] => $nginx);
} @parsers;

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }

# the request headers Django reported, or undef when nginx answered
sub seen {
    my ($r) = @_;
    my $echo = Mtls::Django::json($r->{body}) or return undef;

    return Mtls::Django::headers_seen($echo);
}

# target: name, host, path, whether the module maps an identity there
my @targets = (
    ['the module on', 'api.example.test', '/echo', 1],
    ['the module off', 'api.example.test', '/off/echo', 0],
    ['the public server', 'public.example.test', '/echo', 0],
);

for my $round (1, 2) {
    for my $parser (@parsers) {
        for my $http2 (0, 1) {
            for my $target (@targets) {
                for my $cert ('alpha', undef) {
                    check($parser->[0], $target, $cert, $http2, $round);
                }
            }
        }
    }
}

sub check {
    my ($parsing, $target, $cert, $http2, $round) = @_;
    my ($where, $host, $path, $module) = @$target;
    my $name = sprintf '%s, %s, %s, %s (%d)', $where,
        defined $cert ? 'alpha' : 'no certificate',
        $http2 ? 'HTTP/2' : 'HTTP/1.1', $parsing, $round;

    my $before = $django->echo_count;
    my $r = Mtls::Client::get(
        port => $nginx{$parsing}->port, host => $host, path => $path,
        http2 => $http2, defined $cert ? (cert => $cert) : (),
        headers => ['User-Agent: mtls-tests', @forged]);

    # no certificate where an identity is required: nginx's 496
    if ($module && !defined $cert) {
        is $r->{status}, 400, "$name: refused with 400";
        like $r->{body}, qr/No required SSL certificate/,
            "$name: as nginx's 496";
        is header($r, 'X-Mtls-Identity-Reason'), 'no_cert',
            "$name: reason no_cert";
        is $django->echo_count, $before, "$name: Django saw no request";
        return;
    }

    my $mapped = $module && defined $cert;
    my %want = (
        'Host' => $host,
        'X-Forwarded-Proto' => 'https',
        'X-Client-Verify' =>
            defined $cert && $host eq 'api.example.test' ? 'SUCCESS'
                                                         : 'NONE',
        'Connection' => 'close',
        'User-Agent' => 'mtls-tests',
        'Accept' => '*/*',
        $mapped ? (
            'X-Mtls-Identity' => 'svc-alpha',
            'X-Mtls-Identity-Groups' => 'api',
            'X-Mtls-Identity-Key' => 'fingerprint',
            'X-Mtls-Identity-Fingerprint' => $alpha_fp,
        ) : (),
    );

    is $r->{status}, 200, "$name: 200";
    is_deeply seen($r), \%want,
        "$name: Django got exactly the headers nginx set, each once";

    my $echo = Mtls::Django::json($r->{body}) // {};
    is $echo->{user}, $mapped ? 'svc-alpha' : undef,
        "$name: Django's user is " . ($mapped ? 'svc-alpha' : 'anonymous');
    ok !exists $echo->{REMOTE_USER}, "$name: no REMOTE_USER";

    my @traces = grep { /$forged_trace/ } values %{ seen($r) // {} };
    is_deeply \@traces, [], "$name: no forged value anywhere";
}

# forged headers among many others: removing them from nginx's header
# list (which grows in parts of 20) keeps every other header, in any
# position, including an empty forged one (curl sends "Name;" as empty)
for my $round (1, 2) {
    for my $every (1, 7, 19, 20) {
        my @headers = ('X-Mtls-Identity: svc-admin', 'Remote-User: x');

        for my $n (1 .. 60) {
            push @headers, sprintf 'X-Pad-%02d: v%02d', $n, $n;
            push @headers, "X-Mtls-Identity: svc-admin$n",
                           "X-Mtls-Identity-Groups: g$n"
                if $n % $every == 0;
        }
        push @headers, 'X-Mtls-Identity-Fingerprint: 00', 'X-Mtls-Identity;';

        for my $http2 (0, 1) {
            my $name = sprintf 'forged headers after every %d of 60, %s (%d)',
                $every, $http2 ? 'HTTP/2' : 'HTTP/1.1', $round;
            my $r = Mtls::Client::get(
                port => $nginx{$parsers[0][0]}->port, path => '/echo',
                cert => 'alpha', http2 => $http2, headers => \@headers);
            my $seen = seen($r) // {};

            is_deeply {
                map { $_ => $seen->{$_} } grep { /^X-(Pad|Mtls)|^Remote/ }
                keys %$seen
            }, {
                (map { sprintf('X-Pad-%02d', $_) => sprintf('v%02d', $_) }
                 1 .. 60),
                'X-Mtls-Identity' => 'svc-alpha',
                'X-Mtls-Identity-Groups' => 'api',
                'X-Mtls-Identity-Key' => 'fingerprint',
                'X-Mtls-Identity-Fingerprint' => $alpha_fp,
            }, "$name: every other header arrives, the identity once";
        }
    }
}

# several requests on one connection (keep-alive, HTTP/2 streams): each
# gets the headers of its own location
for my $round (1, 2) {
    for my $http2 (0, 1) {
        my $port = $nginx{$parsers[0][0]}->port;
        my @paths = ('/echo', '/off/echo', '/echo', '/off/echo');
        my $out = Mtls::Nginx::run_capture(
            'curl', '-sS', $http2 ? '--http2' : '--http1.1',
            '--cacert', "$Mtls::Nginx::FIXTURES/root-a.crt",
            '--resolve', "api.example.test:$port:127.0.0.1",
            '--cert', "$Mtls::Nginx::FIXTURES/alpha.crt",
            '--key', "$Mtls::Nginx::FIXTURES/alpha.key",
            '-H', 'X-Mtls-Identity: svc-admin',
            '-w', '\n%{num_connects}\n',
            map { "https://api.example.test:$port$_" } @paths);
        my @lines = split /\n/, $out;
        my @users = map { (Mtls::Django::json($lines[2 * $_]) // {})->{user} }
            0 .. $#paths;
        my $connects = 0;
        $connects += $lines[2 * $_ + 1] // 0 for 0 .. $#paths;

        is_deeply \@users, ['svc-alpha', undef, 'svc-alpha', undef],
            sprintf 'one connection, the module on and off in turn, %s (%d)',
                $http2 ? 'HTTP/2' : 'HTTP/1.1', $round;
        is $connects, 1, "  over a single connection ($round)";
    }
}

# the module's log lines name a removed header, never its value (nginx
# itself logs a whole header line it finds invalid, at info)
$_->stop for values %nginx;

my $log = join "\n", grep { /mtls identity:/ } map {
    split /\n/, $nginx{$_->[0]}->error_log
} @parsers;
like $log, qr/removed client header "X-Mtls-Identity"/,
    'a removed header is logged by name';
like $log, qr/removed client header "X-Mtls_Identity"/,
    'a removed header with an underscore is logged by its own name';
unlike $log, qr/svc-admin|AAAA|Hash=00/,
    'the module logs no forged header value';

for my $parser (@parsers) {
    is_deeply [$nginx{$parser->[0]}->problems], [],
        "$parser->[0]: no alert, emerg or crashed worker";
}

# stopped here, not after the temporary directories are gone
$django->stop;
$pg->stop;

done_testing;
