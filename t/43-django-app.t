#!/usr/bin/perl
#
# End to end with the example Django application: what Django decides on
# its own once nginx has let a certificate through.  It logs in only
# users it already has, authorizes /reports from its own groups (not
# from the groups nginx forwards), treats the request as secure because
# nginx says so in a header a client cannot override, and a session
# cookie alone logs nobody in.  Each case runs twice.

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
    'svc-reporter' => ['api', 'reports'],
]);

sub fp { Mtls::Fixture::fingerprint($_[0]) }

# nginx's allowlist gives svc-alpha the group reports; Django does not
$pg->enrol(username => 'svc-alpha', value => fp('alpha'),
           groups => ['api', 'reports']);
$pg->enrol(username => 'svc-reporter', value => fp('rsa'),
           groups => ['api']);
# allowed by nginx, unknown to Django
$pg->enrol(username => 'svc-stranger', value => fp('nosan'),
           groups => ['api', 'reports']);

my $nginx = Mtls::Nginx->new(http => $django->deployment(
    db => $pg->conninfo));
$nginx->start;

sub ask {
    my (%o) = @_;

    return Mtls::Client::get(port => $nginx->port, %o);
}

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }
sub json { Mtls::Django::json($_[0]{body}) // {} }

for my $round (1, 2) {
    my $r;

    # /reports: Django's group decides, whatever the allowlist says
    $r = ask(cert => 'alpha', path => '/reports');
    is header($r, 'X-Mtls-Identity-Reason'), 'ok',
        "nginx allows svc-alpha ($round)";
    is $r->{status}, 403,
        "  Django refuses /reports without its group reports ($round)";
    like json($r)->{error}, qr/membership of group 'reports'/,
        "  saying which group ($round)";

    $r = ask(cert => 'alpha', path => '/whoami');
    is_deeply [json($r)->{user}, json($r)->{groups},
               json($r)->{forwarded_groups}],
        ['svc-alpha', ['api'], ['api', 'reports']],
        "  Django's groups differ from the forwarded ones ($round)";

    $r = ask(cert => 'rsa', path => '/reports');
    is $r->{status}, 200,
        "a user in Django's group reports gets /reports ($round)";
    is_deeply json($r), { user => 'svc-reporter', reports => [] },
        "  as svc-reporter ($round)";

    # an identity Django does not have stays anonymous
    $r = ask(cert => 'nosan', path => '/whoami');
    is header($r, 'X-Mtls-Identity-Reason'), 'ok',
        "nginx allows an identity Django does not know ($round)";
    is json($r)->{user}, undef, "  Django keeps it anonymous ($round)";
    ok !json($r)->{authenticated}, "  not authenticated ($round)";
    $r = ask(cert => 'nosan', path => '/reports');
    is $r->{status}, 403, "  and refuses /reports ($round)";
    like json($r)->{error}, qr/authentication required/,
        "  as not logged in ($round)";

    # the scheme comes from nginx, not from the client
    for my $target (['api.example.test', 'alpha'],
                    ['public.example.test', undef])
    {
        my ($host, $cert) = @$target;

        $r = ask(host => $host, path => '/whoami',
                 defined $cert ? (cert => $cert) : ());
        ok json($r)->{secure},
            "$host: Django sees a secure request ($round)";

        $r = ask(host => $host, path => '/whoami',
                 defined $cert ? (cert => $cert) : (),
                 headers => ['X-Forwarded-Proto: http',
                             'X-Forwarded-Protocol: http',
                             'X-Forwarded-Ssl: off']);
        is $r->{status}, 200, "$host: with forged scheme headers ($round)";
        ok json($r)->{secure},
            "  Django still sees a secure request ($round)";

        $r = ask(host => $host, path => '/echo',
                 defined $cert ? (cert => $cert) : (),
                 headers => ['X-Forwarded-Proto: http']);
        is json($r)->{HTTP_X_FORWARDED_PROTO}, 'https',
            "  X-Forwarded-Proto arrives once, as https ($round)";
    }

    # a session cookie from an allowed request logs nobody in by itself
    $r = ask(cert => 'alpha', path => '/whoami');
    my @cookies = map { /^([^;]+)/ ? $1 : () }
        @{ $r->{headers}{'set-cookie'} // [] };
    ok scalar(grep { /^sessionid=/ } @cookies),
        "an allowed request gets a session cookie ($round)";

    for my $target (['public.example.test', undef],
                    ['api.example.test', 'nosan'])
    {
        my ($host, $cert) = @$target;

        $r = ask(host => $host, path => '/whoami',
                 defined $cert ? (cert => $cert) : (),
                 headers => ['Cookie: ' . join '; ', @cookies]);
        is json($r)->{user}, undef,
            "  the cookie alone is anonymous on $host"
            . (defined $cert ? " with another certificate" : '')
            . " ($round)";
    }
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# stopped here, not after the temporary directories are gone
$django->stop;
$pg->stop;

done_testing;
