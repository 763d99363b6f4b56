#!/usr/bin/perl
#
# What the documentation tells users to write works as written: the nginx
# configurations in README.md and the Django example pass `nginx -t`
# without a warning, and
# contrib/mtls-identity-enrol writes rows that map certificates by every
# key kind.

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

my $root = $Mtls::Nginx::ROOT;

# the nginx blocks of a markdown file
sub nginx_blocks {
    my ($file) = @_;

    open my $fh, '<', $file or die "$file: $!";
    local $/;
    my $text = <$fh>;
    close $fh;

    return $text =~ /^```nginx\n(.*?)^```/msg;
}

# README's first configuration, with this machine's files and ports
{
    my ($conf) = grep { /load_module/ } nginx_blocks("$root/README.md");
    ok defined $conf, 'README.md has a complete configuration';

    my $nginx = Mtls::Nginx->new(load_module => 0);
    my $f = $Mtls::Nginx::FIXTURES;

    $conf =~ s{load_module \S+;}{load_module %%MODULE%%;};
    $conf =~ s{/etc/nginx/tls/server-chain\.pem}{$f/server-chain.pem};
    $conf =~ s{/etc/nginx/tls/server\.key}{$f/server.key};
    $conf =~ s{/etc/nginx/tls/client-ca\.pem}{$f/trust-a.pem};
    $conf =~ s{listen 443 ssl;}{listen 127.0.0.1:%%PORT%% ssl;};
    $conf =~ s{^load_module[^\n]*\n}{}m;
    $conf =~ s{^http \{\n(.*)^\}\n}{$1}ms;

    my ($ok, $out) = $nginx->test_config(http => $conf);
    ok $ok, "README's configuration passes nginx -t" or diag $out;
    unlike $out, qr/\[(?:warn|emerg)\]/, '  with no warning' or diag $out;
}

# the server block of the Django example's README, in an http block
{
    my ($conf) = nginx_blocks("$root/examples/django/README.md");
    ok defined $conf, 'the Django example shows its nginx server';

    my $nginx = Mtls::Nginx->new;
    my $f = $Mtls::Nginx::FIXTURES;

    $conf =~ s{/etc/nginx/tls/server-chain\.pem}{$f/server-chain.pem};
    $conf =~ s{/etc/nginx/tls/server\.key}{$f/server.key};
    $conf =~ s{/etc/nginx/tls/client-ca\.pem}{$f/trust-a.pem};
    $conf =~ s{listen 443 ssl;}{listen 127.0.0.1:%%PORT%% ssl;};

    my ($ok, $out) = $nginx->test_config(
        http => qq{mtls_identity_db "host=127.0.0.1 dbname=app";\n$conf});
    ok $ok, "the Django example's server passes nginx -t" or diag $out;
    unlike $out, qr/\[(?:warn|emerg)\]/, '  with no warning' or diag $out;
}

# every key kind, enrolled with the helper, maps its certificate
{
    my $pg = Mtls::Pg->new;
    my $echo = Mtls::Echo->new;
    my @kinds = qw(fingerprint spki subject issuer_serial san_uri san_email
                   san_dns);

    for my $kind (@kinds) {
        my $sql = Mtls::Nginx::run_capture(
            "$root/contrib/mtls-identity-enrol",
            "$Mtls::Nginx::FIXTURES/alpha.crt", "by-$kind", $kind, 'api,ops');
        is $?, 0, "the helper writes a $kind row";

        my ($ok, $out) = $pg->try_sql($sql);
        ok $ok, "  which the schema accepts" or diag "$sql\n$out";
    }

    my $locations = join '', map { <<"LOC" } @kinds;
        location /$_ {
            mtls_identity on;
            mtls_identity_key $_;
            add_header X-Id \$mtls_identity always;
            proxy_pass http://127.0.0.1:@{[ $echo->port ]};
        }
LOC

    my $nginx = Mtls::Nginx->new(http => <<"CONF");
    mtls_identity_db "@{[ $pg->conninfo ]}";

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        server_name api.example.test;
@{[ Mtls::Nginx::tls() ]}
$locations
    }
CONF
    $nginx->start;

    for my $round (1, 2) {
        for my $kind (@kinds) {
            my $r = Mtls::Client::get(port => $nginx->port, path => "/$kind",
                                      cert => 'alpha');
            is $r->{headers}{'x-id'}[0], "by-$kind",
                "a $kind row from the helper maps alpha ($round)";
        }
    }

    my $out = Mtls::Nginx::run_capture(
        "$root/contrib/mtls-identity-enrol",
        "$Mtls::Nginx::FIXTURES/many-sans.crt", 'x', 'san_uri');
    isnt $?, 0, 'the helper refuses a san_uri key with two URI SANs';
    like $out, qr/exactly one URI SAN/, '  and says why';

    $nginx->stop;
    is_deeply [$nginx->problems], [], 'no alert, emerg or crashed worker';
}

done_testing;
