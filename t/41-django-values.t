#!/usr/bin/perl
#
# End to end with the example Django application: the values in the
# identity headers.  They come from the database, never from certificate
# text, so quotes, separators and line breaks inside a certificate's
# names change nothing; awkward values from the database are encoded so
# that Django decodes them back exactly, or the request is refused; no
# header carries a certificate, and the groups header stays within what
# gunicorn accepts.  What Django received is read from its /echo and
# /whoami views.  Each case runs twice.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use Test::More;

use Mtls::Client;
use Mtls::Django;
use Mtls::Fixture;
use Mtls::Nginx;
use Mtls::Pg;

my $pg = Mtls::Pg->new;

# 500 groups of 20 bytes: over 10 KB joined, past gunicorn's limit of
# 8190 bytes for one header line
my @many = map { sprintf 'team-%03d-%s', $_, 'x' x 11 } 1 .. 500;

my $django = Mtls::Django->new(users => [
    'svc-gamma' => ['api'],
    'svc-admin' => ['api', 'admin'],
    'svc-delta' => ['api'],
    'svc-epsilon' => ['api'],
    'svc-bigsan' => ['api'],
    'svc-crowd' => ['api'],
]);

sub want { Mtls::Fixture::expect($_[0]) }
sub fp { Mtls::Fixture::fingerprint($_[0]) }

my %ca = (issuer_dn => want('alpha')->{issuer}[0],
          issuer_key_id => want('alpha')->{issuer_key_id}[0]);

# a certificate whose subject carries quotes and "; URI=" pairs: mapped
# by its URI SAN; and a row for the URI its subject pretends to have
$pg->enrol(username => 'svc-gamma', kind => 'san_uri', %ca,
           value => 'spiffe://example.test/ns/prod/sa/gamma',
           groups => ['api']);
$pg->enrol(username => 'svc-admin', kind => 'san_uri', %ca,
           value => 'spiffe://example.test/sa/admin', groups => ['admin']);

# a certificate with CR LF inside its CN
$pg->enrol(username => 'svc-delta', value => fp('crlf'), groups => ['api']);

# a certificate with 300 DNS names, on alpha's key
$pg->enrol(username => 'svc-bigsan', value => fp('bigsan'),
           groups => ['api']);

# an identity in hundreds of groups
$pg->enrol(username => 'svc-crowd', value => fp('multi-rdn'),
           groups => \@many);

# the schema refuses separators and control bytes in names
my $insert = 'INSERT INTO mtls_identity.identity (username, groups,'
    . " key_kind, key_value) VALUES (%s, %s, 'fingerprint', '%s')";
my ($ok, $out) = $pg->try_sql(sprintf $insert, "'svc-gamma'",
                              q{'{api,"ops,admin"}'}, fp('inj'));
ok !$ok, 'the schema refuses a group name with a comma';
like $out, qr/identity_groups_clean/, '  by its group check';

($ok, $out) = $pg->try_sql(sprintf $insert,
    "'svc-eve' || chr(13) || chr(10) || 'X-Injected: yes'", "'{api}'",
    fp('prefix'));
ok !$ok, 'the schema refuses a username with CR LF';
like $out, qr/identity_username_clean/, '  by its username check';

# a database without those checks (an older or hand-made schema)
$pg->sql('ALTER TABLE mtls_identity.identity'
         . ' DROP CONSTRAINT identity_groups_clean,'
         . ' DROP CONSTRAINT identity_username_clean');

$pg->sql(sprintf $insert, "'svc-gamma'", q{'{api,"ops,admin"}'}, fp('inj'));
$pg->sql(sprintf $insert,
    "'svc-eve' || chr(13) || chr(10) || 'X-Injected: yes'", "'{api}'",
    fp('prefix'));
$pg->sql(sprintf $insert, "'svc-' || chr(127) || 'del'", "'{api}'",
         fp('ou-lookalike'));
$pg->sql(sprintf $insert, "'svc-epsilon'",
    "ARRAY['api', 'ops' || chr(13) || chr(10) || 'X-Injected: yes']",
    fp('slash'));

my $nginx = Mtls::Nginx->new(http => $django->deployment(
    db => $pg->conninfo,
    http => <<'CONF',
    log_format entries 'entry $status "$mtls_identity" '
                       '"$mtls_identity_groups" "$mtls_identity_subject" '
                       '"$ssl_client_s_dn"';
    access_log logs/entries.log entries;
CONF
    api => <<'CONF'));
        location /uri/ {
            mtls_identity_key san_uri;
            proxy_pass http://django/;
        }
CONF

$nginx->start;

my $requests = 0;

sub ask {
    my (%o) = @_;

    $requests++;
    return Mtls::Client::get(port => $nginx->port, path => '/echo', %o);
}

sub header { $_[0]{headers}{lc $_[1]}[0] // '' }
sub echo { Mtls::Django::json($_[0]{body}) // {} }
sub seen { Mtls::Django::headers_seen(echo($_[0])) }

# the identity headers Django received: name => value
sub identity_seen {
    my ($r) = @_;
    my $seen = seen($r);

    return { map { $_ => $seen->{$_} } grep { /^X-Mtls-Identity/ }
             keys %$seen };
}

my %plain = map { $_ => 1 } qw(Host X-Forwarded-Proto X-Client-Verify
                               Connection User-Agent Accept);

# header names Django received beyond the usual and the identity ones
sub extra_headers {
    my ($r) = @_;

    return [sort grep { !$plain{$_} && !/^X-Mtls-Identity/ }
            keys %{ seen($r) }];
}

for my $round (1, 2) {
    my ($r, $who);

    # quotes and "; URI=" in the subject: the name comes from the row
    $r = ask(cert => 'inj', path => '/uri/echo');
    is $r->{status}, 200, "a subject with quotes and URI= pairs: 200 ($round)";
    is_deeply identity_seen($r), {
        'X-Mtls-Identity' => 'svc-gamma',
        'X-Mtls-Identity-Groups' => 'api',
        'X-Mtls-Identity-Key' => 'san_uri',
        'X-Mtls-Identity-Fingerprint' => fp('inj'),
    }, "  Django gets svc-gamma from the row ($round)";
    is echo($r)->{user}, 'svc-gamma', "  and logs svc-gamma in ($round)";
    unlike $r->{body}, qr/svc-admin|sa\/admin/,
        "  svc-admin appears nowhere ($round)";
    is_deeply extra_headers($r), [], "  no other header ($round)";

    # a group name with a comma: encoded, decoded as one group
    $r = ask(cert => 'inj', path => '/echo');
    is seen($r)->{'X-Mtls-Identity-Groups'}, 'api,ops%2Cadmin',
        "a comma inside a group name is percent-encoded ($round)";
    $r = ask(cert => 'inj', path => '/whoami');
    is_deeply echo($r)->{forwarded_groups}, ['api', 'ops,admin'],
        "  Django decodes two groups, the second 'ops,admin' ($round)";

    # CR LF inside the certificate's CN
    $r = ask(cert => 'crlf');
    is $r->{status}, 200, "CR LF inside the CN: 200 ($round)";
    is_deeply identity_seen($r), {
        'X-Mtls-Identity' => 'svc-delta',
        'X-Mtls-Identity-Groups' => 'api',
        'X-Mtls-Identity-Key' => 'fingerprint',
        'X-Mtls-Identity-Fingerprint' => fp('crlf'),
    }, "  Django gets svc-delta once ($round)";
    is_deeply extra_headers($r), [],
        "  and no header from the CN's second line ($round)";
    is echo($r)->{user}, 'svc-delta', "  and logs svc-delta in ($round)";

    # control bytes in a username: refused, nothing forwarded
    for my $case (['CR LF', 'prefix'], ['DEL', 'ou-lookalike']) {
        my ($what, $cert) = @$case;
        my $before = $django->echo_count;

        $r = ask(cert => $cert);
        is $r->{status}, 403, "a username with $what: 403 ($round)";
        is header($r, 'X-Mtls-Identity-Reason'), 'unknown',
            "  as unknown ($round)";
        is $django->echo_count, $before, "  Django saw nothing ($round)";
    }

    # CR LF in a group name: percent-encoded, decoded back by Django
    $r = ask(cert => 'slash');
    is $r->{status}, 200, "a group name with CR LF: 200 ($round)";
    is seen($r)->{'X-Mtls-Identity-Groups'}, 'api,ops%0D%0AX-Injected:%20yes',
        "  percent-encoded in the header ($round)";
    is_deeply extra_headers($r), [], "  no header of its own ($round)";
    $r = ask(cert => 'slash', path => '/whoami');
    is_deeply echo($r)->{forwarded_groups},
        ['api', "ops\r\nX-Injected: yes"],
        "  Django decodes it back exactly ($round)";

    # a 13 KB certificate: no header carries it
    $r = ask(cert => 'bigsan', key => 'alpha');
    is $r->{status}, 200, "a certificate with 300 SANs: 200 ($round)";
    is echo($r)->{user}, 'svc-bigsan', "  Django's user svc-bigsan ($round)";
    is_deeply extra_headers($r), [],
        "  no certificate header is forwarded ($round)";
    is_deeply [grep { length > 100 } values %{ seen($r) }], [],
        "  no header value is longer than a fingerprint ($round)";

    # a client's own certificate header, without a certificate
    my $der = `openssl x509 -in $Mtls::Nginx::FIXTURES/alpha.crt -outform DER`;
    my $spoof = 'Client-Cert: :' . encode_base64($der, '') . ':';

    for my $target (['the public server', 'public.example.test', '/echo'],
                    ['a location with the module', 'api.example.test',
                     '/uri/echo'])
    {
        my ($where, $host, $path) = @$target;
        my $before = $django->echo_count;

        $r = ask(host => $host, path => $path, headers => [$spoof]);

        if ($host eq 'public.example.test') {
            is $r->{status}, 200, "a spoofed Client-Cert, $where ($round)";
            is_deeply extra_headers($r), [],
                "  does not reach Django ($round)";
            is_deeply identity_seen($r), {}, "  nor any identity ($round)";
        } else {
            is $r->{status}, 400, "a spoofed Client-Cert, $where: 400"
                . " ($round)";
            is $django->echo_count, $before,
                "  Django saw nothing ($round)";
        }
    }

    # hundreds of groups: capped below gunicorn's limit, whole names
    $r = ask(cert => 'multi-rdn');
    is $r->{status}, 200, "an identity in 500 groups: 200 ($round)";
    is echo($r)->{user}, 'svc-crowd', "  through gunicorn ($round)";

    my $groups = seen($r)->{'X-Mtls-Identity-Groups'} // '';
    my @sent = split /,/, $groups;
    cmp_ok length $groups, '<=', 4096,
        "  the groups header stays within 4096 bytes ($round)";
    cmp_ok scalar @sent, '>', 0, "  and is not empty ($round)";
    is_deeply \@sent, [@many[0 .. $#sent]],
        "  whole group names, in order ($round)";
    cmp_ok length($groups) + 1 + length $many[@sent], '>', 4096,
        "  as many as fit ($round)";
}

like $nginx->error_log, qr/\[warn\].*groups.*"svc-crowd".*4096/,
    'groups left out are logged as a warning';

# every log entry stays on one line
my @entries = split /\n/, $nginx->access_log('entries.log');
is scalar @entries, $requests, 'one access log line per request';
is_deeply [grep { !/^entry \d{3} "/ } @entries], [],
    '  each one starting an entry';
like $nginx->access_log('entries.log'),
    qr/^entry 200 "svc-delta" "api" "CN=svc-delta[^"\n]+: svc-admin,O=/m,
    '  the subject with a line break logged on its own line';

my @lines = split /\n/, $nginx->error_log;
is_deeply [grep { !/^\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d \[\w+\] / } @lines],
    [], 'every error log line starts an entry';

$nginx->stop;
is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';

# stopped here, not after the temporary directories are gone
$django->stop;
$pg->stop;

done_testing;
