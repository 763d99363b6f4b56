#!/usr/bin/perl
#
# Two servers on one address trust different CAs.  A client that sends no
# SNI is verified by the default server's trust settings and then names
# the other server in Host (nginx answers 421 itself only when SNI and
# Host disagree).  The module maps a certificate only when the server
# handling the request has the trust settings it was verified with,
# OCSP checking included.

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

my $f = $Mtls::Nginx::FIXTURES;
my $dir = tempdir('mtls-trust-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $dir;
system("cat $f/root-b.crt $f/ca-b.crt > $dir/trust-b.pem") == 0 or die;
chmod 0644, "$dir/trust-b.pem";

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $port = $echo->port;

# one allowlist for both servers: svc-alpha holds a CA A certificate
$pg->enrol(username => 'svc-alpha',
           value => Mtls::Fixture::expect('alpha')->{fingerprint}[0]);

my $tls_a = Mtls::Nginx::tls(verify => 'on', trust => 'trust-a.pem');
(my $tls_b = $tls_a) =~ s{%%FIXTURES%%/trust-a\.pem}{$dir/trust-b.pem};

# server A is the default one; server B's TLS lines are the caller's
sub two_servers {
    my ($tls_b) = @_;

    return Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}";

    server {
        listen 127.0.0.1:%%PORT%% ssl default_server;
        server_name a.example.test;
$tls_a
        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name b.example.test;
$tls_b
        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
}

my $nginx = two_servers($tls_b);
$nginx->start;

for my $round (1, 2) {
    # with SNI, server B's own trust store refuses the CA A certificate
    my $sni = Mtls::Client::get(port => $nginx->port, host => 'b.example.test',
                                cert => 'alpha');
    isnt $sni->{status}, 200, "SNI b.example.test: CA A refused ($round)";

    # without SNI (an address in the URL), Host picks server B
    my $r = Mtls::Client::get(port => $nginx->port, host => '127.0.0.1',
                              cert => 'alpha',
                              curl => ['-k'],
                              headers => ['Host: b.example.test']);
    isnt $r->{status}, 200,
        "no SNI, Host b.example.test: CA A refused by server B ($round)";
    is Mtls::Echo::parse($r->{body})->{'x-mtls-identity'} // '', '',
        "  and no identity reaches server B's upstream ($round)";
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# the same trust store, but server B also asks an OCSP responder (here
# one that never answers): the default server's handshake skipped that
my $dead = Mtls::Nginx::free_port();
my $ocsp = two_servers(<<"TLS");
$tls_a
        ssl_ocsp on;
        ssl_ocsp_responder http://127.0.0.1:$dead/;
TLS
$ocsp->start;

for my $round (1, 2) {
    my $a = Mtls::Client::get(port => $ocsp->port, host => 'a.example.test',
                              cert => 'alpha', curl => ['-k']);
    is $a->{status}, 200, "SNI a.example.test, no OCSP: allowed ($round)";

    my $r = Mtls::Client::get(port => $ocsp->port, host => '127.0.0.1',
                              cert => 'alpha',
                              curl => ['-k'],
                              headers => ['Host: b.example.test']);
    is $r->{status}, 400,
        "no SNI, Host b.example.test: OCSP skipped, so refused ($round)";
    like $r->{body}, qr/SSL certificate error/,
        "  as nginx's 495, unverified ($round)";
}

$ocsp->stop;
is_deeply [$ocsp->problems], [], 'no alert, emerg or crashed worker';

done_testing;
