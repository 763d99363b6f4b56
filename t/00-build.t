#!/usr/bin/perl
#
# The packagers' route: nginx's configure with this repository as
# --add-dynamic-module, then `make modules`, on a copy of the nginx-dev
# source tree; the module it builds loads into Debian's nginx.  Without
# the SSL module, or as a static module, configure stops with a clear
# message.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;

use Mtls::Nginx;

my $src = $ENV{NGINX_SRC} || '/usr/share/nginx/src';
plan skip_all => "no nginx source tree in $src" unless -x "$src/configure";

my $root = $Mtls::Nginx::ROOT;

# configure ARGS...: runs nginx's configure in a fresh copy of the tree;
# returns (exit status, output, tree)
sub configure {
    my (@args) = @_;
    my $tree = tempdir('mtls-build-XXXXXX', TMPDIR => 1, CLEANUP => 1);

    system('cp', '-r', "$src/.", $tree) == 0 or die "cp failed";

    my $out = Mtls::Nginx::run_capture(
        'sh', '-c', 'cd "$1" && shift && exec ./configure "$@"', 'sh',
        $tree, @args);
    return ($? >> 8, $out, $tree);
}

my ($status, $out, $tree) = configure('--with-compat',
    '--with-http_ssl_module', "--add-dynamic-module=$root");
is $status, 0, 'configure --with-compat --with-http_ssl_module passes'
    or diag $out;

$out = Mtls::Nginx::run_capture('make', '-C', $tree, '-f', 'objs/Makefile',
                                'modules');
is $?, 0, 'make modules builds the module' or diag $out;

my $so = "$tree/objs/ngx_http_mtls_identity_module.so";
ok -f $so, 'the module is in objs/';

{
    local $Mtls::Nginx::MODULE = $so;
    my $nginx = Mtls::Nginx->new(http => <<'CONF');
    server {
        listen 127.0.0.1:%%PORT%%;
        return 200 "$mtls_identity_fingerprint";
    }
CONF
    my ($ok, $said) = $nginx->test_config;
    ok $ok, "Debian's nginx loads it and nginx -t passes" or diag $said;
}

($status, $out) = configure('--with-compat', "--add-dynamic-module=$root");
isnt $status, 0, 'configure without the SSL module fails';
like $out, qr/needs\s+nginx's SSL module.*--with-http_ssl_module/s,
    'and says to add --with-http_ssl_module';

($status, $out) = configure('--with-compat', '--with-http_ssl_module',
                            "--add-module=$root");
isnt $status, 0, 'configure --add-module fails';
like $out, qr/dynamic module only:\s+use --add-dynamic-module=/,
    'and says to use --add-dynamic-module';

done_testing;
