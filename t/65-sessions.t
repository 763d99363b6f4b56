#!/usr/bin/perl
#
# TLS sessions and virtual servers: a resumed session keeps its identity
# and is decided again on every request; a session made with one virtual
# server never carries its identity to another that trusts other CAs; a
# Host that names another server than SNI did never reaches a protected
# location under the wrong TLS settings.

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

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;
my $dir = tempdir('mtls-sessions-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub fp { Mtls::Fixture::expect($_[0])->{fingerprint}[0] }

$pg->enrol(username => 'svc-alpha', value => fp('alpha'), groups => ['api']);
$pg->enrol(username => 'svc-beta', value => fp('beta'), groups => ['api-b']);

sub server {
    my ($name, $trust, $group, $verify) = @_;

    return <<"CONF";
    server {
        listen 127.0.0.1:%%PORT%% ssl http2;
        server_name $name;
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate %%FIXTURES%%/$trust;
        ssl_verify_client $verify;
        ssl_verify_depth 2;

        add_header X-Id \$mtls_identity always;
        add_header X-Reason \$mtls_identity_reason always;

        location /echo {
            mtls_identity on;
            mtls_identity_require_group $group;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
}

sub config {
    my ($verify) = @_;

    return <<"CONF" . server('api.example.test', 'trust-a.pem', 'api', $verify)
    mtls_identity_db "@{[ $pg->conninfo ]}";

    ssl_session_cache shared:SSL:1m;
    ssl_session_tickets on;

    server {
        listen 127.0.0.1:%%PORT%% ssl http2 default_server;
        server_name public.example.test;
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;

        location / {
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
        . server('api-b.example.test', 'trust-ab.pem', 'api-b', $verify);
}

my $nginx = Mtls::Nginx->new(http => config('on'));
$nginx->start;

my $seq = 0;

# one request with openssl s_client; returns { status, id, reused, out }
sub s_client {
    my (%o) = @_;
    my $f = $Mtls::Nginx::FIXTURES;
    my $request = "$dir/request." . $seq++;

    open my $fh, '>', $request or die $!;
    print $fh "GET /echo HTTP/1.1\r\nHost: $o{host}\r\n"
            . "Connection: close\r\n\r\n";
    close $fh;

    my @cmd = ('openssl', 's_client', '-connect',
               '127.0.0.1:' . $nginx->port, '-CAfile', "$f/root-a.crt",
               '-ign_eof', @{ $o{args} // [] });
    push @cmd, '-servername', $o{sni} if defined $o{sni};
    push @cmd, '-noservername' unless defined $o{sni};
    push @cmd, '-cert', "$f/$o{cert}.crt", '-key', "$f/$o{cert}.key"
        if $o{cert};

    my $out = Mtls::Nginx::run_capture('sh', '-c', 'exec "$@" < "$0"',
                                       $request, @cmd);
    my ($status) = $out =~ m{HTTP/1\.1 (\d{3})};
    my ($id) = $out =~ /^X-Id: ?(.*?)\r?$/mi;

    return { status => $status // 0, id => $id // '',
             reused => $out =~ /^Reused,/m ? 1 : 0, out => $out };
}

# resumption keeps the identity, and the decision is made again
for my $proto ('-tls1_3', '-tls1_2') {
    for my $round (1, 2) {
        my $sess = "$dir/alpha$proto.$round";
        my $first = s_client(host => 'api.example.test',
                             sni => 'api.example.test', cert => 'alpha',
                             args => [$proto, '-sess_out', $sess]);
        is $first->{status}, 200, "$proto: a full handshake, 200 ($round)";
        is $first->{id}, 'svc-alpha', "  as svc-alpha ($round)";

        my $again = s_client(host => 'api.example.test',
                             sni => 'api.example.test',
                             args => [$proto, '-sess_in', $sess]);
        ok $again->{reused}, "$proto: the next connection resumed ($round)"
            or diag $again->{out};
        is $again->{status}, 200, "  200 without sending the certificate"
            . " ($round)";
        is $again->{id}, 'svc-alpha', "  the same identity ($round)";
    }
}

# a session made with api never carries svc-alpha to api-b
for my $proto ('-tls1_3', '-tls1_2') {
    for my $round (1, 2) {
        my $sess = "$dir/cross$proto.$round";
        my @extra = $proto eq '-tls1_2' ? ('-no_ticket') : ();

        s_client(host => 'api.example.test', sni => 'api.example.test',
                 cert => 'alpha', args => [$proto, @extra, '-sess_out',
                                           $sess]);
        my $cross = s_client(host => 'api-b.example.test',
                             sni => 'api-b.example.test',
                             args => [$proto, @extra, '-sess_in', $sess]);

        isnt $cross->{status}, 200,
            "$proto: api's session on api-b is not allowed ($round)";
        isnt $cross->{id}, 'svc-alpha', "  nor named svc-alpha ($round)";
    }
}

# Host and SNI disagree: nginx's 421, before the module
for my $host ('api.example.test', 'api.example.test.', 'API.EXAMPLE.TEST',
              'api.example.test:' . $nginx->port)
{
    my $before = $echo->count;
    my $r = Mtls::Client::get(port => $nginx->port,
                              host => 'public.example.test', path => '/echo',
                              headers => ["Host: $host"]);
    is $r->{status}, 421, "SNI public, Host $host: 421";
    is $echo->count, $before, '  and no upstream request';
}

{
    my $r = Mtls::Client::get(port => $nginx->port,
                              host => 'public.example.test', path => '/echo',
                              http2 => 1,
                              headers => ['Host: api.example.test']);
    is $r->{status}, 421, 'HTTP/2, :authority names api: 421';
}

# no SNI, Host api: api's settings apply, no certificate was asked for
my $plain = s_client(host => 'api.example.test', args => ['-tls1_3']);
is $plain->{status}, 400, 'no SNI, Host api, no certificate: 400 (496)';

my $good = s_client(host => 'api.example.test', sni => 'api.example.test',
                    cert => 'alpha', args => ['-tls1_3']);
is $good->{status}, 200, 'SNI and Host api with alpha: 200';
is $good->{id}, 'svc-alpha', '  as svc-alpha';

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# with optional verification, a resumed session is not "no certificate"
$nginx = Mtls::Nginx->new(http => config('optional'));
$nginx->start;

for my $round (1, 2) {
    my $sess = "$dir/optional.$round";

    s_client(host => 'api.example.test', sni => 'api.example.test',
             cert => 'alpha', args => ['-tls1_3', '-sess_out', $sess]);
    my $again = s_client(host => 'api.example.test',
                         sni => 'api.example.test',
                         args => ['-tls1_3', '-sess_in', $sess]);
    ok $again->{reused}, "optional: resumed ($round)";
    is $again->{status}, 200, "optional: resumed, still 200 ($round)";
    is $again->{id}, 'svc-alpha', "  as svc-alpha ($round)";
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
