#!/usr/bin/perl
#
# Name-based keys are bound to the issuer name and authority key
# identifier the leaf carries, and its issuer writes both.  Under a second
# trusted root, a CA can copy another hierarchy's issuing CA (its name,
# and its key identifier as its own subject key identifier); its leaves
# then carry exactly that issuer's name and key id.  nginx -t warns about
# name-based keys under more than one root, and with the issuing CA in
# ssl_client_certificate, as the warning says, nginx builds the chain
# with the trusted CA and the copy's leaves fail verification.

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
my $dir = tempdir('mtls-evil-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{MTLS_KEEP});
chmod 0755, $dir;

sub openssl {
    my $out = Mtls::Nginx::run_capture('openssl', @_);
    die "openssl @_ failed:\n$out" if $? != 0;
}

sub write_file {
    my ($name, $text) = @_;
    open my $fh, '>', "$dir/$name" or die $!;
    print $fh $text;
    close $fh;
    chmod 0644, "$dir/$name";
}

# CA A's subject key identifier, as the leaves of CA A name it
my $ski = `openssl x509 -in $f/ca-a.crt -noout -ext subjectKeyIdentifier`;
($ski) = $ski =~ /([0-9A-F]{2}(?::[0-9A-F]{2})+)/ or die "no SKI";

# another root, trusted for its own clients
openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
        'ec_paramgen_curve:P-256', '-out', "$dir/other-root.key");
openssl('req', '-x509', '-new', '-key', "$dir/other-root.key", '-subj',
        '/O=Other Tenant/CN=Other Root', '-days', '3650', '-out',
        "$dir/other-root.crt", '-addext', 'basicConstraints=critical,CA:TRUE',
        '-addext', 'keyUsage=critical,keyCertSign,cRLSign');

# its intermediate takes CA A's name and key identifier
write_file('ca.ext', "basicConstraints=critical,CA:TRUE,pathlen:0\n"
    . "keyUsage=critical,keyCertSign,cRLSign\n"
    . "subjectKeyIdentifier=$ski\nauthorityKeyIdentifier=keyid\n");
openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
        'ec_paramgen_curve:P-256', '-out', "$dir/twin.key");
openssl('req', '-new', '-key', "$dir/twin.key", '-subj',
        '/O=Example Test/CN=Test Issuing CA A', '-out', "$dir/twin.csr");
openssl('x509', '-req', '-in', "$dir/twin.csr", '-CA', "$dir/other-root.crt",
        '-CAkey', "$dir/other-root.key", '-set_serial', '77', '-days', '3650',
        '-extfile', "$dir/ca.ext", '-out', "$dir/twin.crt");

# a leaf with svc-alpha's subject, serial and URI SAN
write_file('leaf.ext', "basicConstraints=critical,CA:FALSE\n"
    . "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    . "authorityKeyIdentifier=keyid\n"
    . "subjectAltName=URI:spiffe://example.test/ns/prod/sa/alpha\n");
openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
        'ec_paramgen_curve:P-256', '-out', "$dir/forged.key");
openssl('req', '-new', '-key', "$dir/forged.key", '-subj',
        '/O=Example Test/OU=Services/CN=svc-alpha', '-out', "$dir/forged.csr");
openssl('x509', '-req', '-in', "$dir/forged.csr", '-CA', "$dir/twin.crt",
        '-CAkey', "$dir/twin.key", '-set_serial', '0x1001', '-days', '3650',
        '-extfile', "$dir/leaf.ext", '-out', "$dir/forged-leaf.crt");

sub slurp { local (@ARGV, $/) = @_; <> }

write_file('forged.crt', slurp("$dir/forged-leaf.crt") . slurp("$dir/twin.crt"));
write_file('alpha.crt', slurp("$f/alpha.crt") . slurp("$f/ca-a.crt"));
write_file('trust.pem', slurp("$f/root-a.crt") . slurp("$dir/other-root.crt"));
chmod 0644, glob "$dir/*";

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;
my $want = Mtls::Fixture::expect('alpha');
my ($issuer, $key_id) = ($want->{issuer}[0], $want->{issuer_key_id}[0]);

for my $row ([subject => $want->{subject}[0]], [issuer_serial => '1001'],
             [san_uri => 'spiffe://example.test/ns/prod/sa/alpha'])
{
    $pg->enrol(username => 'svc-alpha', kind => $row->[0],
               value => $row->[1], issuer_dn => $issuer,
               issuer_key_id => $key_id);
}

my $port = $echo->port;

sub config {
    my ($trust) = @_;

    return <<"CONF";
    mtls_identity_db "@{[ $pg->conninfo ]}";

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate $trust;
        ssl_verify_client on;
        ssl_verify_depth 2;

        add_header X-Id \$mtls_identity always;

        location /subject {
            mtls_identity on;
            mtls_identity_key subject;
            proxy_pass http://127.0.0.1:$port;
        }
        location /serial {
            mtls_identity on;
            mtls_identity_key issuer_serial;
            proxy_pass http://127.0.0.1:$port;
        }
        location /uri {
            mtls_identity on;
            mtls_identity_key san_uri;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF
}

# the two roots only: nginx -t warns
{
    my $nginx = Mtls::Nginx->new(http => config("$dir/trust.pem"));
    my ($ok, $out) = $nginx->test_config;

    ok $ok, 'two roots and name-based keys: nginx -t passes';
    like $out, qr/\[warn\].*identities are mapped by name, and the trust files hold 2 root CAs.*put every CA that issues client certificates in ssl_client_certificate/,
        '  with a warning that says what to do';
}

# as the warning says: the issuing CA trusted too
write_file('trust-int.pem', slurp("$f/ca-a.crt") . slurp("$f/root-a.crt")
                            . slurp("$dir/other-root.crt"));

my $nginx = Mtls::Nginx->new(http => config("$dir/trust-int.pem"));
$nginx->start;

for my $round (1, 2) {
    for my $path (qw(/subject /serial /uri)) {
        my $good = Mtls::Client::get(port => $nginx->port, path => $path,
                                     cert => "$dir/alpha.crt",
                                     key => "$f/alpha.key");
        is $good->{headers}{'x-id'}[0], 'svc-alpha',
            "$path: CA A's own svc-alpha is allowed ($round)";

        my $copy = Mtls::Client::get(port => $nginx->port, path => $path,
                                     cert => "$dir/forged.crt",
                                     key => "$dir/forged.key");
        isnt $copy->{status}, 200,
            "$path: a leaf under the copied CA is refused ($round)";
        is $copy->{headers}{'x-id'}[0] // '', '',
            "$path:   and carries no identity ($round)";
    }
}

$nginx->stop;

# nginx 1.22 itself (without the module too) logs the signature failure
# of such a chain at alert, as a stale error of its own handshake
is_deeply [grep { !/ignoring stale global SSL error/ } $nginx->problems],
    [], 'no other alert, emerg or crashed worker';

done_testing;
