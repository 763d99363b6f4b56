#!/usr/bin/perl
#
# The $mtls_identity_* variables, computed by a real nginx from real
# client certificates, equal what the openssl command line printed for
# each fixture.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;

use Mtls::Client;
use Mtls::Fixture;
use Mtls::Nginx;

my @fields = qw(fingerprint spki subject issuer serial
                san_uri san_email san_dns);

my $vars = join '', map { "$_=\$mtls_identity_$_\\n" } @fields;
$vars .= 'reused=$ssl_session_reused\n';
$vars .= 'verify=$ssl_client_verify\n';

my $tls = <<'TLS';
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_depth 2;
TLS

my $nginx = Mtls::Nginx->new(http => <<"CONF");
    log_format identity '\$mtls_identity_fingerprint \$mtls_identity_serial';

    map \$mtls_identity_serial \$serial_class {
        1001     alpha;
        default  other;
    }

    ssl_session_cache shared:SSL:1m;

    server {
        listen 127.0.0.1:%%PORT%% ssl http2;
        server_name api.example.test;
$tls
        ssl_client_certificate %%FIXTURES%%/trust-ab.pem;
        ssl_verify_client optional;

        location /vars {
            return 200 "$vars";
        }

        location /mapped {
            access_log logs/identity.log identity;
            return 200 "\$serial_class";
        }
    }

    server {
        listen 127.0.0.1:%%PORT_noca%% ssl;
        server_name api.example.test;
$tls
        ssl_client_certificate %%FIXTURES%%/trust-a.pem;
        ssl_verify_client optional_no_ca;

        location /vars {
            return 200 "$vars";
        }
    }
CONF

$nginx->start;

sub values_of {
    my ($r) = @_;
    my %got;

    for my $line (split /\n/, $r->{body}) {
        my ($field, $value) = split /=/, $line, 2;
        $got{$field} = $value // '';
    }

    return \%got;
}

sub wanted {
    my ($name) = @_;
    my $want = Mtls::Fixture::expect($name);
    my %vars = map { $_ => '' } @fields;

    $vars{fingerprint} = $want->{fingerprint}[0];
    return \%vars if ($want->{refused}[0] // '') eq 'yes';

    for my $field (@fields) {
        my @values = @{ $want->{$field} // [] };
        $vars{$field} = $field =~ /^san_/ ? Mtls::Fixture::joined(@values)
                                          : $values[0] // '';
    }

    return \%vars;
}

my @names = Mtls::Fixture::names();
cmp_ok scalar @names, '>=', 12, 'at least twelve fixture certificates';

for my $round (1, 2) {
    for my $name (@names) {
        my $r = Mtls::Client::get(port => $nginx->port, path => '/vars',
                                  cert => $name);
        is $r->{status}, 200, "$name: answered (round $round)";

        my $got = values_of($r);
        my $want = wanted($name);
        is $got->{verify}, 'SUCCESS', "$name: verified by nginx";
        is_deeply { map { $_ => $got->{$_} } @fields }, $want,
            "$name: every variable as openssl prints it (round $round)";
    }

    my $none = values_of(Mtls::Client::get(port => $nginx->port,
                                            path => '/vars'));
    is $none->{verify}, 'NONE', "no certificate: nginx says NONE ($round)";
    is_deeply [grep { $none->{$_} ne '' } @fields], [],
        "no certificate: every variable is empty (round $round)";

    my $h2 = Mtls::Client::get(port => $nginx->port, path => '/vars',
                               cert => 'alpha', http2 => 1);
    is_deeply { map { $_ => values_of($h2)->{$_} } @fields },
        wanted('alpha'), "HTTP/2: the same values (round $round)";

    # a second connection resumes the first one's TLS session
    my @resumed = Mtls::Client::requests(
        port => $nginx->port, cert => 'alpha',
        urls => ['/vars', '/vars'],
        headers => ['Connection: close']);
    my ($first, $second) = map { values_of($_) } @resumed;
    is $second->{reused}, 'r', "the second connection resumed ($round)";
    is_deeply { map { $_ => $second->{$_} } @fields }, wanted('alpha'),
        "a resumed session keeps every variable (round $round)";

    # another CA, accepted unverified by optional_no_ca
    my $unverified = values_of(Mtls::Client::get(
        port => $nginx->port('noca'), path => '/vars', cert => 'alpha-b'));
    like $unverified->{verify}, qr/^FAILED:/,
        "CA B under optional_no_ca: nginx says FAILED ($round)";
    is_deeply [grep { $unverified->{$_} ne '' } @fields], [],
        "an unverified certificate yields no variable (round $round)";

    my $mapped = Mtls::Client::get(port => $nginx->port, path => '/mapped',
                                   cert => 'alpha');
    is $mapped->{body}, 'alpha', "map reads a variable (round $round)";

    $mapped = Mtls::Client::get(port => $nginx->port, path => '/mapped',
                                cert => 'serial-10');
    is $mapped->{body}, 'other', "map: another serial differs ($round)";
}

my $alpha = wanted('alpha');
like $nginx->access_log('identity.log'),
    qr/^\Q$alpha->{fingerprint} 1001\E$/m,
    'log_format writes the variables';

like $nginx->error_log, qr/\[info\].*yields no identity/,
    'a refused identity is logged at info';

$nginx->stop;

is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
