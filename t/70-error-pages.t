#!/usr/bin/perl
#
# A request nginx refuses before its phases run (495/496 under
# "ssl_verify_client on", 497 for plain HTTP on the TLS port, 400/494 from
# header parsing, 405) and sends on with error_page never passes the
# post-read phase.  The identity headers a client forged still never
# reach an upstream, whatever path the request took, and where the error
# page's location has the module on, only the module's own value of each
# header arrives.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use IO::Socket::SSL;
use Test::More;

use Mtls::Client;
use Mtls::Dump;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;
my $dump = Mtls::Dump->new;
my $dump_port = $dump->port;

$pg->enrol(username => 'svc-alpha',
           value => Mtls::Fixture::expect('alpha')->{fingerprint}[0]);

my $nginx = Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}";

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'on') ]}
        large_client_header_buffers 2 1k;

        error_page 495 496 497 = \@nocert;
        error_page 400 494 = \@bad;
        error_page 405 = \@app;

        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }

        location \@nocert {
            proxy_pass http://127.0.0.1:$port;
        }

        location \@bad {
            proxy_pass http://127.0.0.1:$port;
        }

        location \@app {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$dump_port;
        }
    }
CONF
$nginx->start;

my @forged = ('X-Mtls-Identity: admin', 'X-Mtls-Identity-Groups: superuser');

for my $round (1, 2) {
    # no certificate at all: nginx answers 496 itself, error_page proxies
    my $r = Mtls::Client::get(port => $nginx->port, headers => \@forged);
    my $seen = Mtls::Echo::parse($r->{body});
    is $seen->{'x-mtls-identity'} // '', '',
        "496 via error_page: no forged identity upstream ($round)";
    is $seen->{'x-mtls-identity-groups'} // '', '',
        "  nor forged groups ($round)";

    # a certificate nginx cannot verify: 495
    $r = Mtls::Client::get(port => $nginx->port, cert => 'self',
                           headers => \@forged);
    is Mtls::Echo::parse($r->{body})->{'x-mtls-identity'} // '', '',
        "495 via error_page: no forged identity upstream ($round)";

    # plain HTTP on the TLS port: 497
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $nginx->port) or die $!;
    print $sock "GET / HTTP/1.1\r\nHost: api.example.test\r\n"
              . "X-Mtls-Identity: admin\r\nConnection: close\r\n\r\n";
    my $plain = do { local $/; <$sock> } // '';
    close $sock;
    unlike $plain, qr/x-mtls-identity=admin/,
        "497 via error_page: no forged identity upstream ($round)";

    # a verified client whose request header is too large: 494
    my $tls = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $nginx->port,
        SSL_verify_mode => SSL_VERIFY_NONE,
        SSL_hostname => 'api.example.test',
        SSL_cert_file => "$Mtls::Nginx::FIXTURES/alpha.crt",
        SSL_key_file => "$Mtls::Nginx::FIXTURES/alpha.key") or die $SSL_ERROR;
    print $tls "GET / HTTP/1.1\r\nHost: api.example.test\r\n"
             . "X-Mtls-Identity: admin\r\nX-Big: " . ('a' x 1500)
             . "\r\nConnection: close\r\n\r\n";
    my $big = do { local $/; <$tls> } // '';
    close $tls;
    unlike $big, qr/x-mtls-identity=admin/,
        "494 via error_page: no forged identity upstream ($round)";

    # nginx refuses TRACE (405) before the phases; the error page's
    # location has the module on and allows svc-alpha (group-less here)
    $tls = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $nginx->port,
        SSL_verify_mode => SSL_VERIFY_NONE,
        SSL_hostname => 'api.example.test',
        SSL_cert_file => "$Mtls::Nginx::FIXTURES/alpha.crt",
        SSL_key_file => "$Mtls::Nginx::FIXTURES/alpha.key") or die $SSL_ERROR;
    print $tls "TRACE / HTTP/1.1\r\nHost: api.example.test\r\n"
             . "X-Mtls-Identity: root\r\nX-Mtls-Identity: root\r\n"
             . "X-Mtls-Identity-Groups: admin\r\n"
             . "X-Mtls-Identity-Groups: admin\r\nConnection: close\r\n\r\n";
    my $trace = do { local $/; <$tls> } // '';
    close $tls;
    is_deeply [Mtls::Dump::values($trace, 'X-Mtls-Identity')], ['svc-alpha'],
        "405 via error_page, module on: one identity, svc-alpha ($round)";
    is_deeply [Mtls::Dump::values($trace, 'X-Mtls-Identity-Groups')], [],
        "  and no forged groups ($round)";
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
