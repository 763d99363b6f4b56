#!/usr/bin/perl
#
# `nginx -t` refuses the dangerous mTLS configurations and warns about the
# doubtful ones, in one lowercase line that names the file and line, what
# is wrong and what to write instead; the checker audits a configuration
# that does not use the module yet.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;

use Mtls::Nginx;

my $f = $Mtls::Nginx::FIXTURES;
my $dir = tempdir('mtls-config-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $dir;

sub run {
    my (@cmd) = @_;
    my $out = Mtls::Nginx::run_capture(@cmd);

    die "@cmd failed:\n$out" if $? != 0;
    return $out;
}

# a CA of its own, with its key, so the tests can sign its CRLs
run('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
    'ec_paramgen_curve:P-256', '-nodes', '-keyout', "$dir/ca.key", '-out',
    "$dir/ca.crt", '-days', '30', '-subj', '/O=Example Test/CN=Config CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');

# crl NAME LAST NEXT: a CRL of that CA, with these dates (YYYYMMDDHHMMSSZ)
sub crl {
    my ($name, $last, $next) = @_;

    open my $fh, '>', "$dir/index.txt" or die $!;
    close $fh;
    open $fh, '>', "$dir/ca.cnf" or die $!;
    print $fh "[ca]\ndefault_ca = c\n[c]\ndatabase = $dir/index.txt\n"
        . "default_md = sha256\ncrlnumber = $dir/crlnumber\n";
    close $fh;
    open $fh, '>', "$dir/crlnumber" or die $!;
    print $fh "01\n";
    close $fh;

    run('openssl', 'ca', '-batch', '-config', "$dir/ca.cnf", '-gencrl',
        '-keyfile', "$dir/ca.key", '-cert', "$dir/ca.crt",
        '-crl_lastupdate', $last, '-crl_nextupdate', $next,
        '-out', "$dir/$name.pem");
    chmod 0644, "$dir/$name.pem";
    return "$dir/$name.pem";
}

sub stamp {
    my ($offset) = @_;
    my @t = gmtime(time + $offset);

    return sprintf '%04d%02d%02d%02d%02d%02dZ', $t[5] + 1900, $t[4] + 1,
        @t[3, 2, 1, 0];
}

my $good_crl = crl('good', stamp(-3600), stamp(7 * 86400));
my $expired_crl = crl('expired', stamp(-7 * 86400), stamp(-3600));
my $due_crl = crl('due', stamp(-86400), stamp(6 * 3600));
run('cp', "$f/trust-a.pem", "$dir/not-a-crl.pem");
run('sh', '-c', "cat $dir/ca.crt $f/root-a.crt > $dir/two.pem");

# a trust file with 21 CAs
{
    open my $out, '>', "$dir/many.pem" or die $!;
    for my $n (1 .. 21) {
        run('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
            'ec_paramgen_curve:P-256', '-nodes', '-keyout', "$dir/m.key",
            '-out', "$dir/m.crt", '-days', '30', '-subj', "/CN=Bundle CA $n",
            '-addext', 'basicConstraints=critical,CA:TRUE');
        open my $in, '<', "$dir/m.crt" or die $!;
        print {$out} <$in>;
        close $in;
    }
    close $out;
}

chmod 0644, glob "$dir/*";

my $db = 'mtls_identity_db "host=127.0.0.1 dbname=x user=x";';

# server LINES: a TLS server with the module on, around extra lines
sub server {
    my (%o) = @_;
    my $verify = $o{verify} // 'on';
    my $trust = $o{trust} // "$f/trust-a.pem";
    my $extra = $o{extra} // '';
    my $location = $o{location} // "mtls_identity on;\n"
                                   . "            proxy_pass http://127.0.0.1:9;";

    return <<"CONF";
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
        ssl_certificate $f/server-chain.pem;
        ssl_certificate_key $f/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate $trust;
        ssl_verify_client $verify;
$extra
        location / {
            $location
        }
    }
CONF
}

# check NAME, HTTP-BLOCK, EXPECT (pass|fail), MESSAGE-RE
sub check {
    my ($name, $http, $expect, $re, %o) = @_;
    my $nginx = Mtls::Nginx->new(http => $http);

    local $ENV{MTLS_IDENTITY_AUDIT} = $o{audit} ? 1 : 0;
    my ($ok, $out) = $nginx->test_config;

    if ($expect eq 'pass') {
        ok $ok, "$name: nginx -t passes" or diag $out;
    } else {
        ok !$ok, "$name: nginx -t fails" or diag $out;
    }

    if (defined $re) {
        my ($line) = grep { /$re/ } split /\n/, $out;
        ok defined $line, "$name: says what is wrong and what to do"
            or diag $out;
        like $line // '', qr/\[(?:emerg|warn)\] (?:\d+#\d+: )?[a-z"]/,
            "$name: one line, starting in lower case";
        like $line // '', qr{\S+\.conf:\d+|/\S+:\d+},
            "$name: names the file and line";
    } else {
        unlike $out, qr/\[(?:warn|emerg)\]/, "$name: no warning" or diag $out;
    }

    return $out;
}

# the good configuration, with a CRL
check('a sound configuration', $db . server(
    trust => "$dir/ca.crt",
    extra => "        ssl_crl $good_crl;"), 'pass', undef);

check('a sound configuration with optional and the module everywhere',
      "$db\n    mtls_identity on;\n" . server(verify => 'optional'),
      'pass', undef);

# refused
check('the module in a server that asks for no certificate',
      $db . server(verify => 'off'), 'fail',
      qr/"ssl_verify_client off": use "ssl_verify_client on"/);

check('the module where optional_no_ca passes unverified certificates',
      $db . server(verify => 'optional_no_ca'), 'fail',
      qr/"ssl_verify_client optional_no_ca": use "ssl_verify_client on"/);

check('report mode counts as using the module',
      $db . server(verify => 'off', location => 'mtls_identity report;'),
      'fail', qr/needs client certificates that nginx verified/);

check('the module in a plain http server', <<"CONF", 'fail',
    $db
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { mtls_identity on; }
    }
CONF
      qr/"ssl_verify_client off"/);

check('satisfy any beside the module',
      $db . server(location => "satisfy any;\n            allow 127.0.0.1;\n"
                               . "            mtls_identity on;"),
      'fail', qr/"satisfy any".*use "satisfy all"/);

check('a CRL file that lacks the CRL of a trusted CA',
      $db . server(trust => "$dir/two.pem",
                   extra => "        ssl_crl $good_crl;"),
      'fail', qr/"ssl_crl" of the server in .*:\d+: .*Test Root A/);

check('a CRL file that holds no CRL',
      $db . server(trust => "$dir/ca.crt",
                   extra => "        ssl_crl $dir/not-a-crl.pem;"),
      'fail', qr/"ssl_crl" of the server in .*:\d+: .*holds no crl/);

check('a CRL past its next update',
      $db . server(trust => "$dir/ca.crt",
                   extra => "        ssl_crl $expired_crl;"),
      'fail', qr/"ssl_crl" of the server .*expired.*renew/);

check('a decision directive without a database',
      server(), 'fail', qr/needs a database: add "mtls_identity_db"/);

check('a malformed conninfo',
      'mtls_identity_db "host=x dbnam=y";', 'fail',
      qr/invalid conninfo in "mtls_identity_db": .*"dbnam"/);

check('a conninfo whose host does not resolve',
      'mtls_identity_db "host=no-such-host.invalid";', 'fail',
      qr/"mtls_identity_db": host "no-such-host.invalid" cannot be resolved/);

check('an unknown key kind',
      "$db\n    mtls_identity_key fingerprint cn;", 'fail',
      qr/unknown key kind "cn" in "mtls_identity_key"; use fingerprint/);

check('a zone too small for one entry',
      "$db\n    mtls_identity_cache zone=c:8k;", 'fail',
      qr/zone "c" is too small to hold a single entry: use at least/);

check('a duplicate directive',
      "$db\n    $db", 'fail', qr/"mtls_identity_db" directive is duplicate/);

check('an empty group name',
      "$db\n    mtls_identity_require_group api \"\";", 'fail',
      qr/empty group name in "mtls_identity_require_group"/);

check('a group name with a comma in it',
      "$db\n    mtls_identity_require_group api \"ops,admin\";", 'fail',
      qr/group 2 of "mtls_identity_require_group" can never match: .*; name each group as its own argument/);

check('a group name past what the schema holds',
      "$db\n    mtls_identity_require_group " . ('g' x 129) . ";", 'fail',
      qr/group 1 of "mtls_identity_require_group" can never match/);

check('a long group name in UTF-8 that the schema holds',
      "$db\n    mtls_identity_require_group " . ("\xc3\xa9" x 128) . ";", 'pass');

check('a stale policy without a cache',
      "$db\n    mtls_identity_on_db_error stale=30s;\n" . server(), 'fail',
      qr/"mtls_identity_on_db_error stale=" in \S+:\d+ serves from the cache/);

check('a strip pattern that matches a header nginx reads itself',
      "$db\n    mtls_identity_strip_header X-*;", 'fail',
      qr/"X-\*" in "mtls_identity_strip_header" matches "X-Forwarded-For"/);

# warned, but nginx -t passes
check('underscores allowed beside a server that forwards identity',
      $db . server() . <<'CONF', 'pass',
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name other.example.test;
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        underscores_in_headers on;
    }
CONF
      qr/"underscores_in_headers on" on 127\.0\.0\.1:\d+, where the server/);

check('invalid header names allowed beside a server that forwards identity',
      $db . server(extra => '        ignore_invalid_headers off;'), 'pass',
      qr/"ignore_invalid_headers off".*use "ignore_invalid_headers on"/);

check('an upstream reachable without a certificate',
      $db . server(verify => 'optional', extra => <<'EXTRA'), 'pass',
        location /open {
            mtls_identity off;
            proxy_pass http://127.0.0.1:9;
        }
EXTRA
      qr/location "\/open" hands requests to an upstream with "mtls_identity off"/);

check('a CRL due within a day',
      $db . server(trust => "$dir/ca.crt",
                   extra => "        ssl_crl $due_crl;"),
      'pass', qr/"ssl_crl" of the server .*Config CA/);

check('a verify depth shorter than the trusted chains',
      $db . server(extra => '        ssl_verify_depth 0;'), 'pass',
      qr/"ssl_verify_depth" .*use ssl_verify_depth 1/);

check('a trust file with more than 20 CAs',
      $db . server(trust => "$dir/many.pem"), 'pass',
      qr/"ssl_client_certificate" of the server .*21 CAs/);

# checks run where the module is used, unless auditing
my $unused = <<"CONF";
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name old.example.test;
        ssl_certificate $f/server-chain.pem;
        ssl_certificate_key $f/server.key;
        ssl_client_certificate $f/trust-a.pem;
        ssl_verify_client optional_no_ca;

        location / {
            proxy_pass http://127.0.0.1:9;
        }
    }
CONF

check('plain nginx -t leaves servers without the module alone',
      $unused, 'pass', undef);
check('the audit checks every server that asks for certificates',
      $unused, 'fail', qr/"ssl_verify_client optional_no_ca", which passes/,
      audit => 1);

# the checker, on a configuration that never loads the module
{
    my $nginx = Mtls::Nginx->new(http => $unused, load_module => 0);
    $nginx->write_config;

    local $ENV{NGINX_PREFIX} = $nginx->prefix . '/';
    my $out = Mtls::Nginx::run_capture(
        "$Mtls::Nginx::ROOT/contrib/mtls-identity-check-config",
        $nginx->prefix . '/conf/nginx.conf');
    my $status = $? >> 8;

    isnt $status, 0, 'the checker fails a configuration with an error';
    like $out, qr/optional_no_ca/, '  and prints the finding';
    like $out, qr/has errors/, '  and says so';
}

{
    my $nginx = Mtls::Nginx->new(load_module => 0, http => <<"CONF");
    server {
        listen 127.0.0.1:%%PORT%% ssl;
        ssl_certificate $f/server-chain.pem;
        ssl_certificate_key $f/server.key;
        ssl_client_certificate $f/trust-a.pem;
        ssl_verify_client optional;

        location / {
            proxy_pass http://127.0.0.1:9;
        }
    }
CONF
    $nginx->write_config;

    local $ENV{NGINX_PREFIX} = $nginx->prefix . '/';
    my $out = Mtls::Nginx::run_capture(
        "$Mtls::Nginx::ROOT/contrib/mtls-identity-check-config",
        $nginx->prefix . '/conf/nginx.conf');

    is $? >> 8, 0, 'the checker passes a configuration with warnings only';
    like $out, qr/\[warn\].*location "\/" hands requests to an upstream/,
        '  and prints the warning';
}

done_testing;
