#!/usr/bin/perl
#
# The access decision against a real PostgreSQL: every outcome, every key
# kind, and the identity failures of real deployments (the same name from
# another CA, SAN type confusion, DN look-alikes, serial and fingerprint
# spellings).  Each case runs twice.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;

use Mtls::Client;
use Mtls::Echo;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;
my $echo = Mtls::Echo->new;

sub want { Mtls::Fixture::expect($_[0]) }
sub fp { want($_[0])->{fingerprint}[0] }

my $issuer = want('alpha')->{issuer}[0];
my $issuer_key = want('alpha')->{issuer_key_id}[0];

# a row of a name-based kind, bound to CA A
sub bound {
    my (%row) = @_;

    return $pg->enrol(issuer_dn => $issuer, issuer_key_id => $issuer_key,
                      %row);
}

# the baseline: alpha by fingerprint, subject, URI SAN and issuer/serial
$pg->enrol(username => 'svc-alpha', value => fp('alpha'), groups => ['api']);
bound(username => 'svc-alpha', kind => 'subject',
      value => want('alpha')->{subject}[0], groups => ['api']);
bound(username => 'svc-alpha', kind => 'san_uri',
      value => 'spiffe://example.test/ns/prod/sa/alpha', groups => ['api']);
bound(username => 'svc-alpha', kind => 'issuer_serial', value => '1001',
      groups => ['api']);

# SAN rows of other types for alpha's names, and an admin URI
bound(username => 'svc-alpha-dns', kind => 'san_dns',
      value => 'alpha.svc.example.test');
bound(username => 'svc-alpha-mail', kind => 'san_email',
      value => 'alpha@example.test');
bound(username => 'svc-admin', kind => 'san_uri',
      value => 'spiffe://example.test/ns/prod/sa/admin');

# one row per key kind
$pg->enrol(username => 'svc-rsa', kind => 'spki', value => want('rsa')->{spki}[0]);
bound(username => 'svc-utf', kind => 'subject',
      value => "CN=svc-\xc3\xa7\xc3\xa9-\xc3\xbc,O=Example Test");
bound(username => 'svc-highbit', kind => 'issuer_serial', value => '80a1');
bound(username => 'svc-san-only', kind => 'san_uri',
      value => 'spiffe://example.test/ns/prod/sa/san-only');
bound(username => 'svc-san-dns', kind => 'san_dns',
      value => 'san-only.example.test');
bound(username => 'svc-many', kind => 'san_email', value => 'one@example.test');

# outcomes
$pg->enrol(username => 'svc-revoked-fp', value => fp('specials'));
$pg->sql("INSERT INTO mtls_identity.revocation (fingerprint, reason)
          VALUES ('" . fp('specials') . "', 'keyCompromise')");
$pg->enrol(username => 'svc-revoked-serial', value => fp('spaces'));
$pg->sql("INSERT INTO mtls_identity.revocation (issuer_dn, serial, reason)
          VALUES (" . $pg->quote($issuer) . ", '1014', 'superseded')");
$pg->enrol(username => 'svc-disabled', value => fp('multi-rdn'),
           sql => { enabled => 'false' });
$pg->enrol(username => 'svc-expired', value => fp('email-dn'),
           sql => { valid_until => "now() - interval '1 hour'" });
$pg->enrol(username => 'svc-future', value => fp('serial-zero'),
           sql => { valid_from => "now() + interval '1 day'" });
$pg->enrol(username => 'svc-window', value => fp('serial-leadzero'),
           sql => { valid_from => "now() - interval '1 day'",
                    valid_until => "now() + interval '1 day'" });
$pg->enrol(username => 'svc-latin', value => fp('t61'), groups => ['api']);

# serials that share digits with alpha's, and a negative one
$pg->enrol(username => 'svc-s10', value => fp('serial-10'));
$pg->enrol(username => 'svc-s100100', value => fp('serial-100100'));
$pg->enrol(username => 'svc-neg', value => fp('serial-negative'));
$pg->enrol(username => 'svc-highbit-fp', value => fp('serial-highbit'));

# an SPKI hash stored as a fingerprint never matches as one
$pg->enrol(username => 'svc-spki-as-fp', value => want('rsa')->{spki}[0]);

my $all = 'fingerprint spki subject issuer_serial san_uri san_email san_dns';
my $port = $echo->port;

my @kinds = qw(spki subject issuer_serial san_uri san_email san_dns);
my $kind_locations = join '', map { <<"LOC" } @kinds;
        location /$_ {
            mtls_identity_key $_;
            proxy_pass http://127.0.0.1:$port;
        }
LOC

my $nginx = Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}" timeout=5s;

    log_format decision '\$request_uri \$status \$mtls_identity_reason';

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'optional', trust => 'trust-ab.pem') ]}
        access_log logs/decision.log decision;

        mtls_identity on;

        add_header X-Id \$mtls_identity always;
        add_header X-Groups \$mtls_identity_groups always;
        add_header X-Key \$mtls_identity_key always;
        add_header X-Status \$mtls_identity_status always;
        add_header X-Reason \$mtls_identity_reason always;

        location / {
            proxy_pass http://127.0.0.1:$port;
        }

        location /any {
            mtls_identity_key $all;
            proxy_pass http://127.0.0.1:$port;
        }
$kind_locations
        location /uri-first {
            mtls_identity_key san_uri subject fingerprint;
            proxy_pass http://127.0.0.1:$port;
        }

        location /group {
            mtls_identity_require_group api-b ops;
            proxy_pass http://127.0.0.1:$port;
        }

        location /group-ok {
            mtls_identity_require_group ops api;
            proxy_pass http://127.0.0.1:$port;
        }

        location /report {
            mtls_identity report;
            proxy_pass http://127.0.0.1:$port;
        }

        location /off {
            mtls_identity off;
            proxy_pass http://127.0.0.1:$port;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_a%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'optional', trust => 'trust-a.pem') ]}
        access_log logs/decision.log decision;

        location / {
            mtls_identity on;
            add_header X-Reason \$mtls_identity_reason always;
            proxy_pass http://127.0.0.1:$port;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_on%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'on', trust => 'trust-a.pem') ]}
        access_log logs/decision.log decision;

        location / {
            mtls_identity on;
            proxy_pass http://127.0.0.1:$port;
        }
    }
CONF

$nginx->start;

# request: (cert, path, %more) -> response
sub ask {
    my ($cert, $path, %o) = @_;

    return Mtls::Client::get(port => $o{port} // $nginx->port,
                             path => $path, defined $cert ? (cert => $cert,
                             key => $o{key} // $cert) : ());
}

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }

# case: name, cert, path, status, reason, identity (undef: none), key
my @cases = (
    ['baseline allowed', 'alpha', '/', 200, 'ok', 'svc-alpha', 'fingerprint'],
    ['groups come from the row', 'alpha', '/group-ok', 200, 'ok',
     'svc-alpha'],
    ['no row is unknown', 'prefix', '/', 403, 'unknown'],
    ['revoked by fingerprint', 'specials', '/', 403, 'revoked'],
    ['revoked by issuer and serial', 'spaces', '/', 403, 'revoked'],
    ['revocation is checked whatever the key kind', 'spaces', '/any', 403,
     'revoked'],
    ['disabled', 'multi-rdn', '/', 403, 'disabled'],
    ['a grant past its end is expired', 'email-dn', '/', 403, 'expired'],
    ['a grant not yet valid is expired', 'serial-zero', '/', 403,
     'expired'],
    ['inside its window the grant allows', 'serial-leadzero', '/', 200, 'ok',
     'svc-window'],
    ['a required group the identity lacks', 'alpha', '/group', 403,
     'group'],

    # each key kind on its own
    ['spki key', 'rsa', '/spki', 200, 'ok', 'svc-rsa', 'spki'],
    ['subject key, UTF-8 compared decoded', 'utf8', '/subject', 200, 'ok',
     'svc-utf', 'subject'],
    ['issuer_serial key', 'serial-highbit', '/issuer_serial', 200, 'ok',
     'svc-highbit', 'issuer_serial'],
    ['san_uri key', 'san-only', '/san_uri', 200, 'ok', 'svc-san-only',
     'san_uri'],
    ['san_email key', 'many-sans', '/san_email', 200, 'ok', 'svc-many',
     'san_email'],
    ['san_dns key', 'san-only', '/san_dns', 200, 'ok', 'svc-san-dns',
     'san_dns'],
    ['the first listed kind with a row decides', 'alpha', '/uri-first', 200,
     'ok', 'svc-alpha', 'san_uri'],
    ['an unlisted kind never maps', 'rsa', '/', 403, 'unknown'],
    ['an SPKI hash stored as a fingerprint never matches', 'rsa', '/', 403,
     'unknown'],

    # the same name and serial from CA B, trusted by nginx
    ['another CA: fingerprint', 'alpha-b', '/', 403, 'unknown'],
    ['another CA: every key kind', 'alpha-b', '/any', 403, 'unknown'],
    ['another CA: subject', 'alpha-b', '/subject', 403, 'unknown'],
    ['another CA: issuer and serial', 'alpha-b', '/issuer_serial', 403,
     'unknown'],
    ['another CA: URI SAN', 'alpha-b', '/san_uri', 403, 'unknown'],

    # SAN types never stand in for each other
    ['SAN strings under other types', 'confuse', '/any', 403, 'unknown'],
    ['no SAN: the CN is no DNS name', 'nosan', '/san_dns', 403, 'unknown'],
    ['two URI SANs give no URI key', 'twomatch', '/san_uri', 403,
     'unknown'],
    ['DNS SAN maps its own row', 'alpha', '/san_dns', 200, 'ok',
     'svc-alpha-dns', 'san_dns'],
    ['e-mail SAN maps its own row', 'alpha', '/san_email', 200, 'ok',
     'svc-alpha-mail', 'san_email'],

    # DN look-alikes of alpha's subject
    ['a longer CN is another name', 'prefix', '/subject', 403, 'unknown'],
    ['a DN inside an OU value', 'ou-lookalike', '/subject', 403,
     'unknown'],
    ['an escaped comma inside a CN', 'comma-rdn', '/subject', 403,
     'unknown'],
    ['a slash inside a CN', 'slash', '/subject', 403, 'unknown'],
    ['alpha by subject', 'alpha', '/subject', 200, 'ok', 'svc-alpha',
     'subject'],

    # raw Latin-1 bytes in the subject reach the database as UTF-8
    ['T61String subject', 't61', '/any', 200, 'ok', 'svc-latin'],

    # report mode lets everything through, naming nobody it would deny
    ['report: allowed', 'alpha', '/report', 200, 'ok', 'svc-alpha'],
    ['report: unknown passes', 'alpha-b', '/report', 200, 'unknown'],
    ['report: revoked passes as nobody', 'specials', '/report', 200,
     'revoked'],
    ['report: no certificate passes', undef, '/report', 200, 'no_cert'],

    # no certificate under optional
    ['no certificate', undef, '/', 400, 'no_cert'],
    ['no certificate where the module is off', undef, '/off', 200,
     'no_cert'],
    ['a certificate where the module is off', 'alpha', '/off', 200, ''],
);

for my $round (1, 2) {
    for my $case (@cases) {
        my ($name, $cert, $path, $status, $reason, $id, $key) = @$case;
        my $r = ask($cert, $path);
        my $seen = Mtls::Echo::parse($r->{body});

        is $r->{status}, $status, "$name: status $status ($round)";
        is header($r, 'X-Reason'), $reason, "$name: reason ($round)";
        is header($r, 'X-Id'), $id // '', "$name: \$mtls_identity ($round)";
        is header($r, 'X-Key'), $key, "$name: key $key ($round)"
            if defined $key;

        next unless $status == 200;

        is $seen->{'x-mtls-identity'}, $id // '',
            "$name: the upstream sees " . ($id // 'nobody') . " ($round)";

        if (defined $id && $path ne '/off') {
            is $seen->{'x-mtls-identity-fingerprint'}, fp($cert),
                "$name: the upstream gets the fingerprint ($round)";
        }

        if ($path =~ m{^/report}) {
            is header($r, 'X-Status'), defined $id ? 'allow' : 'report',
                "$name: status variable ($round)";
        }
    }
}

# the groups of the row, and the status variable on allow and deny
my $r = ask('alpha', '/');
is header($r, 'X-Groups'), 'api', 'groups variable';
is header($r, 'X-Status'), 'allow', 'status allow';
is Mtls::Echo::parse($r->{body})->{'x-mtls-identity-groups'}, 'api',
    'the upstream gets the groups';
is header(ask('alpha-b', '/'), 'X-Status'), 'deny', 'status deny';

# certificates nginx itself refuses, whatever rows exist for them
$pg->enrol(username => 'svc-expired-cert',
           value => Mtls::Fixture::fingerprint('expired'));
$pg->enrol(username => 'svc-self', value => Mtls::Fixture::fingerprint('self'));

my $before = $echo->count;

for my $round (1, 2) {
    $r = ask('expired', '/', key => 'alpha');
    is $r->{status}, 400, "an expired certificate: 400 from nginx ($round)";
    like $r->{body}, qr/SSL certificate error/, "  as nginx's 495 ($round)";

    $r = ask('self', '/');
    is $r->{status}, 400, "a self-signed look-alike: 400 ($round)";
    like $r->{body}, qr/SSL certificate error/, "  as nginx's 495 ($round)";

    $r = ask('alpha-b', '/', port => $nginx->port('a'));
    is $r->{status}, 400, "CA B where only A is trusted: 400 ($round)";

    $r = ask(undef, '/', port => $nginx->port('on'));
    is $r->{status}, 400, "no certificate under 'on': 400 ($round)";
    like $r->{body}, qr/No required SSL certificate/, "  as 496 ($round)";
}

is $echo->count, $before, 'no refused request reached the upstream';

like $nginx->access_log('decision.log'), qr{^/ 400 unverified$}m,
    'a certificate nginx refused logs its reason as unverified';
like $nginx->access_log('decision.log'), qr{^/ 400 no_cert$}m,
    'a request nginx refused without a certificate logs no_cert';

# the denial line: info, with the reason and the fingerprint
my $log = $nginx->error_log;
my $specials = fp('specials');
like $log, qr/\[info\].*access denied \(revoked\), certificate $specials/,
    'a denial is logged at info with its reason and fingerprint';
like $log, qr/\[info\].*would deny \(unknown\)/,
    'report mode logs what it would have denied';
unlike $log, qr/\[error\]/, 'no client fault is logged as an error';

# rows the schema refuses: non-canonical keys never sit in the table
my @refused = (
    ['a legacy slash-separated DN',
     "('svc-legacy', 'subject', '/O=Example Test/OU=Services/CN=svc-alpha', "
     . $pg->quote($issuer) . ", '$issuer_key')"],
    ['an upper-case fingerprint with colons',
     "('svc-x', 'fingerprint', '"
     . join(':', map { uc } fp('alpha') =~ /(..)/g) . "', NULL, NULL)"],
    ['a fingerprint with a prefix',
     "('svc-x', 'fingerprint', 'sha256 Fingerprint=" . fp('alpha')
     . "', NULL, NULL)"],
    ['a SHA-1 fingerprint',
     "('svc-x', 'fingerprint', '" . substr(fp('alpha'), 0, 40)
     . "', NULL, NULL)"],
    ['a truncated fingerprint',
     "('svc-x', 'fingerprint', '" . substr(fp('alpha'), 0, 32)
     . "', NULL, NULL)"],
    ['a subject row without its issuer',
     "('svc-x', 'subject', 'CN=x', NULL, NULL)"],
    ['a SAN row without the issuer key id',
     "('svc-x', 'san_uri', 'spiffe://x', " . $pg->quote($issuer)
     . ", NULL)"],
    ['a serial with colons',
     "('svc-x', 'issuer_serial', '80:a1', " . $pg->quote($issuer)
     . ", '$issuer_key')"],
    ['a serial with a sign byte',
     "('svc-x', 'issuer_serial', '0080a1', " . $pg->quote($issuer)
     . ", '$issuer_key')"],
    ['an unknown key kind',
     "('svc-x', 'cn', 'svc-alpha', NULL, NULL)"],
    ['a username with a line break',
     "('svc' || chr(10) || 'x', 'fingerprint', '" . ('a' x 64)
     . "', NULL, NULL)"],
);

for my $case (@refused) {
    my ($name, $values) = @$case;
    my ($ok, $out) = $pg->try_sql(
        'INSERT INTO mtls_identity.identity (username, key_kind, key_value,'
        . " issuer_dn, issuer_key_id) VALUES $values");

    ok !$ok, "the schema refuses $name" or diag $out;
}

for my $serial ('0080A1', '00:80:a1', '00a1', '0A1', 'A1') {
    my ($ok) = $pg->try_sql(
        'INSERT INTO mtls_identity.revocation (issuer_dn, serial) VALUES ('
        . $pg->quote($issuer) . ", '$serial')");
    ok !$ok, "the schema refuses the revocation serial '$serial'";
}

# revoking serial 1001 of CA A: exact equality, no prefix or substring
$pg->sql('INSERT INTO mtls_identity.revocation (issuer_dn, serial) VALUES ('
         . $pg->quote($issuer) . ", '1001')");

for my $round (1, 2) {
    is header(ask('alpha', '/'), 'X-Reason'), 'revoked',
        "serial 1001 revoked: alpha is revoked ($round)";
    is header(ask('serial-10', '/'), 'X-Reason'), 'ok',
        "  serial 10 is not ($round)";
    is header(ask('serial-100100', '/'), 'X-Reason'), 'ok',
        "  serial 100100 is not ($round)";
    is header(ask('serial-negative', '/'), 'X-Reason'), 'ok',
        "  serial -1001 is not ($round)";
    is header(ask('alpha-b', '/any'), 'X-Reason'), 'unknown',
        "  CA B's serial 1001 is another certificate ($round)";
}

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

done_testing;
