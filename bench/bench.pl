#!/usr/bin/perl
#
# bench.pl - ngx_http_mtls_identity_module against stock nginx, side by
# side, in one run.  Run it through bench/run (or `make bench`), which
# installs what is missing and builds the module; bench/README.md says
# what is measured and how to read the report.
#
# Every server runs in a temporary directory on 127.0.0.1: a private
# PostgreSQL, the servers under test (Debian's nginx, with and without
# the module), a load-side nginx that turns wrk's plain HTTP into mTLS
# keep-alive requests, a backend nginx, and the auth service of the
# auth_request variant.  Everything is stopped at the end, also on
# failure or interrupt.
#
#   --save    also write the report to bench/results/DATE-TIME.txt

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Cwd qw(abs_path);
use Digest::SHA qw(sha256_hex);
use File::Copy qw(copy);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use MIME::Base64 qw(decode_base64);
use POSIX qw(strftime);
use Time::HiRes qw(sleep time);

use Bench::Cpu;
use Bench::Nginx;
use Bench::Pg;
use Bench::Util qw(run_capture free_port wait_port write_file read_file
                   pinned median percentile spawn);

$| = 1;

my $ROOT = abs_path("$FindBin::Bin/..");
my $FIX = "$ROOT/tests/fixtures";
my $MODULE = $ENV{MTLS_MODULE}
    || "$ROOT/build/ngx_http_mtls_identity_module.so";
my $SAVE = grep { $_ eq '--save' } @ARGV;

# a whole number from the environment, at least `min` (default 1)
sub setting {
    my ($name, $default, $min) = @_;
    my $v = $ENV{$name};

    $min //= 1;
    return $default unless defined $v && length $v;
    die "$name must be a whole number of at least $min\n"
        unless $v =~ /^\d+$/ && $v >= $min;
    return $v;
}

my $QUICK = $ENV{BENCH_QUICK};
my %CFG = (
    runs => setting('BENCH_RUNS', $QUICK ? 2 : 5),
    duration => setting('BENCH_DURATION', $QUICK ? 2 : 10),
    warmup => setting('BENCH_WARMUP', $QUICK ? 1 : 5),
    settle => setting('BENCH_SETTLE', $QUICK ? 0 : 1, 0),
    conns => setting('BENCH_CONNS', 16),
    rounds => setting('BENCH_REVOKE_ROUNDS', 100),
    identities => setting('BENCH_IDENTITIES', 10000),
    zone => $ENV{BENCH_ZONE} || ($QUICK ? '64k' : '512k'),
    auth_class => $ENV{BENCH_AUTH_CLASS} || 'gthread',
);

die "BENCH_ZONE: a size such as 512k or 1m\n"
    unless $CFG{zone} =~ /^(\d+)([km])$/i;
my $ZONE_BYTES = $1 * (lc $2 eq 'k' ? 1024 : 1024 * 1024);
die "BENCH_ZONE: at least 32k\n" if $ZONE_BYTES < 32 * 1024;

# the load side and the server side
my ($LOAD, $SERVER) = (0, 1);

my @VARIANTS = qw(floor hit miss auth);
my %WHAT = (
    floor => 'stock nginx mTLS, $ssl_client_* headers',
    hit => 'module, warm cache (every request a hit)',
    miss => 'module, no cache (one PostgreSQL lookup each)',
    auth => 'auth_request to a gunicorn service + PostgreSQL',
);

sub progress { print STDERR "bench: @_\n" }

$SIG{INT} = $SIG{TERM} = sub { die "interrupted\n" };

# every server started, stopped in reverse order at the end, also after
# a failure: this END runs before File::Temp's, which removes the
# temporary directory with the servers' pid files
my @STARTED;

END {
    local ($?, $@);
    for my $server (reverse @STARTED) {
        eval { $server->stop };
    }
}

my $TMP = tempdir('mtls-bench-XXXXXX', TMPDIR => 1,
                  CLEANUP => !$ENV{BENCH_KEEP});
chmod 0755, $TMP;
progress("working in $TMP") if $ENV{BENCH_KEEP};

# nginx workers run unprivileged: what they read must be world-readable
make_path("$TMP/certs");
chmod 0755, "$TMP/certs";
for my $f (qw(alpha.crt alpha.key)) {
    copy("$FIX/$f", "$TMP/certs/$f") or die "copy $f: $!";
    chmod 0644, "$TMP/certs/$f";
}

# nginx maps the module it loads: a private copy, so that a rebuild
# while the bench runs never changes the file under a running nginx
-f $MODULE or die "no module at $MODULE: run make module\n";
copy($MODULE, "$TMP/ngx_http_mtls_identity_module.so")
    or die "copy $MODULE: $!";
$MODULE = "$TMP/ngx_http_mtls_identity_module.so";
chmod 0644, $MODULE;

my @report;
sub say_ { push @report, join('', @_) }


# ---------------------------------------------------------------------
# the database

progress('starting PostgreSQL');
my $pg = Bench::Pg->new(dir => $TMP, core => $SERVER,
                        schema => "$ROOT/sql/schema.sql");
push @STARTED, $pg;
my $dbh = $pg->dbh;

sub fingerprint_of {
    my ($file) = @_;
    my $pem = read_file($file);

    $pem =~ /-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----/s
        or die "$file: no certificate\n";
    return sha256_hex(decode_base64($1));
}

my $ALPHA_FP = fingerprint_of("$FIX/alpha.crt");
{
    my ($want) = read_file("$FIX/alpha.expect") =~ /^fingerprint=(\w+)/m;
    die "alpha.crt: fingerprint $ALPHA_FP, alpha.expect says "
        . ($want // 'nothing') . "\n" unless ($want // '') eq $ALPHA_FP;
}

progress("loading $CFG{identities} identities");
$dbh->do(<<'SQL', undef, $ALPHA_FP);
INSERT INTO mtls_identity.identity (username, groups, key_kind, key_value)
VALUES ('svc-alpha', '{api,bench}', 'fingerprint', ?)
SQL

# other rows, so that every lookup is an index lookup in tables of a
# realistic size: identities and revocations by fingerprint
$dbh->do(<<'SQL', undef, $CFG{identities});
INSERT INTO mtls_identity.identity (username, groups, key_kind, key_value)
SELECT 'svc-other-' || g, '{api}', 'fingerprint',
       encode(sha256(('other ' || g)::bytea), 'hex')
  FROM generate_series(1, ?) g
SQL
$dbh->do(<<'SQL', undef, int($CFG{identities} / 10));
INSERT INTO mtls_identity.revocation (fingerprint, reason)
SELECT encode(sha256(('revoked ' || g)::bytea), 'hex'), 'bench filler'
  FROM generate_series(1, ?) g
SQL
$dbh->do('VACUUM ANALYZE');


# ---------------------------------------------------------------------
# the servers

my %PORT = map { $_ => free_port() }
    qw(backend authsvc floor hit miss auth rev1 rev2 fill),
    map { "load_$_" } qw(floor hit miss auth rev1 rev2 fill);

my $BODY = 'user=$http_x_mtls_identity$http_x_remote_user'
           . ' dn=$http_x_ssl_client_s_dn\n';

my $backend = Bench::Nginx->new(
    dir => $TMP, name => 'backend', core => $LOAD,
    ports => [$PORT{backend}], conf => <<"CONF")->start;
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$PORT{backend};
        location / { return 200 "$BODY"; }
    }
}
CONF
push @STARTED, $backend;

progress("starting the auth service (gunicorn, $CFG{auth_class})");
my $auth = spawn("$TMP/auth.log",
    { BENCH_AUTH_DSN => $pg->conninfo, PYTHONDONTWRITEBYTECODE => 1 },
    pinned($SERVER, '/usr/bin/python3', '/usr/bin/gunicorn',
           '--chdir', "$ROOT/bench", '--bind', "127.0.0.1:$PORT{authsvc}",
           '--workers', 2, '--worker-class', $CFG{auth_class},
           '--threads', 1, '--keep-alive', 300, '--log-level', 'warning',
           'auth_service:application'));
push @STARTED, $auth;
wait_port($PORT{authsvc}, 20)
    or die "the auth service does not start:\n" . read_file("$TMP/auth.log");

my $TLS_SERVER = <<"TLS";
        ssl_certificate $FIX/server-chain.pem;
        ssl_certificate_key $FIX/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate $FIX/trust-a.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
TLS

my $PROXY = <<'PROXY';
            proxy_http_version 1.1;
            proxy_set_header Connection "";
PROXY

# a server under test: Debian's nginx, one location / that proxies to
# the backend over keep-alive, and /probe, the same with the module's
# variables in response headers (the bench's checks; never measured)
sub sut {
    my (%o) = @_;
    my $load = $o{module} ? "load_module $MODULE;\n" : '';
    my $probe = $o{module} ? <<'ADD' : '';
            add_header X-Cache $mtls_identity_cache always;
            add_header X-Reason $mtls_identity_reason always;
ADD

    return Bench::Nginx->new(
        dir => $TMP, name => $o{name}, core => $SERVER,
        ports => [$PORT{$o{name}}], conf => <<"CONF");
${load}worker_processes @{[ $o{workers} // 1 ]};
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;

    upstream backend {
        server 127.0.0.1:$PORT{backend};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
@{[ $o{http} // '' ]}
    server {
        listen 127.0.0.1:$PORT{$o{name}} ssl;
        server_name api.example.test;
$TLS_SERVER
        keepalive_requests 1000000;
        keepalive_timeout 300s;
@{[ $o{server} // '' ]}
        location / {
$PROXY$o{location}
            proxy_pass http://backend;
        }

        location /probe {
$PROXY$o{location}$probe
            proxy_pass http://backend;
        }
    }
}
CONF
}

my $DB = qq{    mtls_identity_db "@{[ $pg->conninfo ]}";\n};

my %sut;

# the usual three: who, whether verified, and which certificate
$sut{floor} = sut(name => 'floor', location => <<'LOC');
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
            proxy_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
            proxy_set_header X-SSL-Client-Fingerprint $ssl_client_fingerprint;
LOC

$sut{hit} = sut(name => 'hit', module => 1, location => '',
    server => "        mtls_identity on;\n",
    http => $DB . "    mtls_identity_cache zone=hit:4m ttl=1h"
            . " negative_ttl=1h;\n");

$sut{miss} = sut(name => 'miss', module => 1, location => '',
    server => "        mtls_identity on;\n", http => $DB);

$sut{auth} = sut(name => 'auth', location => <<'LOC', http => <<"HTTP");
            auth_request /_auth;
            auth_request_set $auth_user $upstream_http_x_remote_user;
            auth_request_set $auth_groups $upstream_http_x_remote_groups;
            proxy_set_header X-Remote-User $auth_user;
            proxy_set_header X-Remote-Groups $auth_groups;
LOC
    upstream auth_service {
        server 127.0.0.1:$PORT{authsvc};
        keepalive 16;
        keepalive_timeout 300s;
    }
HTTP

# the auth subrequest's location
$sut{auth}{conf} =~ s{(        location /probe)}{        location = /_auth {
            internal;
$PROXY            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-SSL-Client-Verify \$ssl_client_verify;
            proxy_set_header X-SSL-Client-Cert \$ssl_client_escaped_cert;
            proxy_pass http://auth_service;
        }

$1};

# revocation latency: two nginx on one database, two workers each
for my $name (qw(rev1 rev2)) {
    $sut{$name} = sut(name => $name, module => 1, workers => 2,
        location => '', server => "        mtls_identity on;\n",
        http => $DB . "    mtls_identity_cache zone=$name:1m ttl=1h"
                . " negative_ttl=1h;\n");
}

# memory per entry: a zone of BENCH_ZONE, filled with many certificates
$sut{fill} = sut(name => 'fill', module => 1, location => '',
    server => "        mtls_identity on;\n",
    http => $DB . "    mtls_identity_cache zone=fill:$CFG{zone} ttl=1h"
            . " negative_ttl=1h;\n");

# the load-side proxy: plain HTTP in, mTLS keep-alive out, with the
# fixture client certificate alpha
my $TLS_CLIENT = <<"TLS";
            proxy_set_header Host api.example.test;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_server_name on;
            proxy_ssl_name api.example.test;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_trusted_certificate $FIX/root-a.crt;
TLS

my $load_conf = '';
for my $name (qw(floor hit miss auth rev1 rev2)) {
    my $listen = $PORT{"load_$name"};

    $load_conf .= <<"CONF";
    upstream $name {
        server 127.0.0.1:$PORT{$name};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$listen;
        location / {
            proxy_pass https://$name;
$PROXY$TLS_CLIENT
            proxy_ssl_certificate $TMP/certs/alpha.crt;
            proxy_ssl_certificate_key $TMP/certs/alpha.key;
            proxy_ssl_session_reuse on;
        }
    }
CONF
}

# one new connection per request, with the certificate the path names:
# no keep-alive and no session reuse, which would keep another one
$load_conf .= <<"CONF";
    server {
        listen 127.0.0.1:$PORT{load_fill};
        location ~ "^/fill/(?<serial>[0-9A-F]+)\$" {
            rewrite ^ /probe break;
            proxy_pass https://127.0.0.1:$PORT{fill};
$TLS_CLIENT
            proxy_ssl_certificate $TMP/certs/fill/\$serial.pem;
            proxy_ssl_certificate_key $TMP/certs/alpha.key;
            proxy_ssl_session_reuse off;
        }
    }
CONF

my $proxy = Bench::Nginx->new(
    dir => $TMP, name => 'load-proxy', core => $LOAD,
    ports => [map { $PORT{"load_$_"} } qw(floor hit miss auth rev1 rev2
                                          fill)],
    conf => <<"CONF");
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    proxy_temp_path temp/proxy;
$load_conf}
CONF

# all at once: a port picked now and bound later could be taken by then
progress('starting nginx: the servers under test and the load-side proxy');
for my $name (@VARIANTS, qw(rev1 rev2 fill)) {
    push @STARTED, $sut{$name};
    $sut{$name}->start;
}
push @STARTED, $proxy;
$proxy->start;


# ---------------------------------------------------------------------
# requests of the bench's own checks, through the load-side proxy

my %http;

sub probe {
    my ($target, $path) = @_;

    my $port = $PORT{"load_$target"};

    $http{$target} //= HTTP::Tiny->new(keep_alive => 1, timeout => 5);
    my $r = $http{$target}->get("http://127.0.0.1:$port"
                                . ($path // '/probe'));

    return {
        status => $r->{status},
        cache => $r->{headers}{'x-cache'} // '',
        reason => $r->{headers}{'x-reason'} // '',
        body => $r->{content} // '',
    };
}

# waits until check() holds, at most `seconds`; returns whether it did
sub within {
    my ($seconds, $check) = @_;
    my $until = time + $seconds;

    while (time < $until) {
        return 1 if $check->();
        sleep 0.02;
    }

    return 0;
}

progress('checking that every variant answers as it should');

# the module's workers connect to PostgreSQL and start listening first
within(10, sub { probe('hit')->{cache} eq 'hit' })
    or die "the cache of 'hit' does not warm up:\n"
           . $sut{hit}->error_log;

my %expect = (
    floor => qr/^user= dn=CN=svc-alpha,OU=Services,O=Example Test$/,
    hit => qr/^user=svc-alpha dn=$/,
    miss => qr/^user=svc-alpha dn=$/,
    auth => qr/^user=svc-alpha dn=$/,
);
my %cache_expect = (floor => '', hit => 'hit', miss => '', auth => '');
my @checks;

for my $v (@VARIANTS) {
    my $r = probe($v);
    chomp(my $body = $r->{body});

    die "variant $v: status $r->{status}, body '$body', cache"
        . " '$r->{cache}'\n" . $sut{$v}->error_log
        unless $r->{status} == 200 && $body =~ $expect{$v}
               && $r->{cache} eq $cache_expect{$v};

    push @checks, sprintf '  %-6s 200, the backend saw "%s"%s', $v, $body,
        length $r->{cache} ? ", X-Cache: $r->{cache}" : '';
}

# a revoked certificate is denied by every variant, then allowed again
$dbh->do('INSERT INTO mtls_identity.revocation (fingerprint, reason)'
         . " VALUES (?, 'bench check')", undef, $ALPHA_FP);
for my $v (@VARIANTS) {
    next if $v eq 'floor';
    within(2, sub { probe($v)->{status} == 403 })
        or die "variant $v: a revoked certificate is not denied\n";
}
$dbh->do("DELETE FROM mtls_identity.revocation WHERE reason = 'bench check'");
for my $v (@VARIANTS) {
    within(2, sub { probe($v)->{status} == 200 })
        or die "variant $v: the certificate is not allowed again\n";
}
within(5, sub { probe('hit')->{cache} eq 'hit' })
    or die "the cache of 'hit' does not warm up again\n";
push @checks, '  hit, miss and auth deny a revoked certificate (403)';


# ---------------------------------------------------------------------
# CPU per request

sub wrk {
    my ($variant, $seconds) = @_;
    my $port = $PORT{"load_$variant"};
    my $url = "http://127.0.0.1:$port/";

    my $out = run_capture(pinned($LOAD, 'wrk', '-t1', "-c$CFG{conns}",
                                 "-d${seconds}s", '--timeout', '5s',
                                 '--latency', $url));
    die "wrk failed:\n$out" if $? != 0;

    my %r = (out => $out, non2xx => 0, errors => 0);
    ($r{requests}, $r{seconds}) = $out =~ /(\d+) requests in ([\d.]+)s/
        or die "wrk said:\n$out";
    $r{non2xx} = $1 if $out =~ /Non-2xx or 3xx responses: (\d+)/;
    if ($out =~ /Socket errors: connect (\d+), read (\d+), write (\d+),
                 \s+timeout (\d+)/x)
    {
        $r{errors} = $1 + $2 + $3 + $4;
    }

    for my $p (50, 99) {
        my ($v, $unit) = $out =~ /^\s+$p%\s+([\d.]+)(us|ms|s)\s*$/m
            or next;
        $r{"p$p"} = $v * { us => 0.001, ms => 1, s => 1000 }->{$unit};
    }

    return \%r;
}

my %roots = (
    nginx => undef,
    pg => $pg->postmaster_pid,
    auth => $auth->pid,
);

# what the machine does while every server of the bench is at rest
sub background {
    my $s0 = Bench::Cpu::snapshot();
    sleep $QUICK ? 1 : 2;
    my $d = Bench::Cpu::delta($s0, Bench::Cpu::snapshot());

    # busy ticks and the wall clock are read a moment apart
    return [map { my $p = 100 * $_ / $d->{wall}; $p > 100 ? 100 : $p }
            @{ $d->{core} }];
}

my @idle = (background());

progress("warming up: $CFG{warmup} s per variant");
wrk($_, $CFG{warmup}) for @VARIANTS;

my (%runs, @raw);
my $total = $CFG{runs} * @VARIANTS;
my $n = 0;

for my $run (1 .. $CFG{runs}) {
    for my $v (@VARIANTS) {
        $n++;
        progress("run $n/$total: $v, $CFG{duration} s");

        # a moment at the same load first: the same steady state for all
        wrk($v, $CFG{settle}) if $CFG{settle} > 0;

        my %r = %roots;
        $r{nginx} = $sut{$v}->master_pid;
        my $s0 = Bench::Cpu::snapshot(%r);
        my $w = wrk($v, $CFG{duration});
        my $s1 = Bench::Cpu::snapshot(%r);
        my $d = Bench::Cpu::delta($s0, $s1);

        my $req = $w->{requests} || 1;
        my %m = (
            requests => $w->{requests},
            seconds => $w->{seconds},
            rps => $w->{requests} / $w->{seconds},
            p50 => $w->{p50},
            p99 => $w->{p99},
            non2xx => $w->{non2xx},
            errors => $w->{errors},
            nginx => 1e6 * $d->{tree}{nginx} / $req,
            pg => 1e6 * $d->{tree}{pg} / $req,
            auth => 1e6 * $d->{tree}{auth} / $req,
            core1 => 1e6 * $d->{core}[$SERVER] / $req,
            core0 => 1e6 * $d->{core}[$LOAD] / $req,
            busy1 => 100 * $d->{core}[$SERVER] / $d->{wall},
        );

        # the server side: the processes that take part in the variant
        $m{server} = $m{nginx};
        $m{server} += $m{pg} if $v ne 'floor';
        $m{server} += $m{auth} if $v eq 'auth';

        # a hit that went to the database would show here
        $m{cache} = $v eq 'hit' ? probe('hit')->{cache} : '';

        push @{ $runs{$v} }, \%m;
        push @raw, sprintf 'RAW cpu variant=%s run=%d requests=%d'
            . ' seconds=%.2f rps=%.0f nginx_us=%.2f pg_us=%.2f'
            . ' auth_us=%.2f server_us=%.2f core1_us=%.2f core0_us=%.2f'
            . ' core1_busy=%.0f%% p50_ms=%.3f p99_ms=%.3f non2xx=%d'
            . ' errors=%d',
            $v, $run, @m{qw(requests seconds rps nginx pg auth server
                            core1 core0 busy1)},
            $m{p50} // -1, $m{p99} // -1, @m{qw(non2xx errors)};
    }
}

my %med;
for my $v (@VARIANTS) {
    for my $k (qw(rps p50 p99 nginx pg auth server core1 core0 busy1)) {
        $med{$v}{$k} = median(map { $_->{$k} } @{ $runs{$v} });
    }
    $med{$v}{bad} = 0;
    $med{$v}{bad} += $_->{non2xx} + $_->{errors} for @{ $runs{$v} };
    $med{$v}{misses} = grep { $_->{cache} ne 'hit' } @{ $runs{$v} }
        if $v eq 'hit';
}


push @idle, background();


# ---------------------------------------------------------------------
# revocation latency

progress("revocation latency: $CFG{rounds} rounds on two nginx");

my @REV = qw(rev1 rev2);
my $CAP = 3;                 # seconds a round waits for a denial
my (%lat, @commit_ms, $rev_fail);

sub warm_both {
    return within(5, sub {
        my $ok = 1;
        for my $i (@REV) {
            my $r = probe($i);
            $ok &&= $r->{status} == 200 && $r->{cache} eq 'hit';
        }
        return $ok;
    });
}

{
    my $tx = $pg->dbh(autocommit => 0);

    warm_both() or die "rev1 and rev2 do not warm up:\n"
                       . $sut{rev1}->error_log . $sut{rev2}->error_log;

    for my $round (1 .. $CFG{rounds}) {
        unless (warm_both()) {
            $rev_fail = "round $round: the cache does not warm up again";
            last;
        }

        $tx->do('INSERT INTO mtls_identity.revocation (fingerprint,'
                . " reason) VALUES (?, 'bench')", undef, $ALPHA_FP);

        # from the moment COMMIT is sent
        my $t0 = time;
        $tx->commit;
        push @commit_ms, 1000 * (time - $t0);

        my %seen;
        while (keys %seen < @REV && time - $t0 < $CAP) {
            for my $i (@REV) {
                next if $seen{$i};
                $seen{$i} = 1000 * (time - $t0)
                    if probe($i)->{status} == 403;
            }
        }

        for my $i (@REV) {
            push @{ $lat{$i} }, $seen{$i} // 1000 * $CAP;
            $lat{timeouts}{$i}++ unless defined $seen{$i};
        }

        $tx->do("DELETE FROM mtls_identity.revocation"
                . " WHERE reason = 'bench'");
        $tx->commit;
    }

    $tx->disconnect;
}

$sut{$_}->stop for @REV;


# ---------------------------------------------------------------------
# memory per cached entry

# at most zone/256 entries fit (a node takes a 256-byte slab slot or
# more), so this many certificates always overflow the zone
my $NCERTS = int(1.15 * $ZONE_BYTES / 256) + 8;
my $FIRST_SERIAL = 0x100001;

progress("minting $NCERTS client certificates with openssl");
{
    my $ca = "$TMP/ca";
    make_path("$ca/out");
    write_file("$ca/index.txt", '');
    write_file("$ca/index.txt.attr", "unique_subject = no\n");
    write_file("$ca/serial", sprintf("%X\n", $FIRST_SERIAL));
    write_file("$ca/ca.cnf", <<"CNF");
[ca]
default_ca = bench

[bench]
dir = $ca
database = $ca/index.txt
new_certs_dir = $ca/out
serial = $ca/serial
default_md = sha256
default_days = 30
policy = any
preserve = yes
unique_subject = no
x509_extensions = leaf

[any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional

[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = URI:spiffe://example.test/ns/bench/sa/svc-fill
CNF

    my $out = run_capture('openssl', 'req', '-new', '-key',
                          "$FIX/alpha.key", '-subj',
                          '/O=Example Test/OU=Services/CN=svc-fill',
                          '-out', "$ca/fill.csr");
    die "openssl req failed:\n$out" if $?;

    # one openssl run signs the same request again and again, each time
    # with the next serial: the same key, a new certificate
    $out = run_capture('openssl', 'ca', '-batch', '-notext', '-config',
                       "$ca/ca.cnf", '-cert', "$FIX/ca-a.crt", '-keyfile',
                       "$FIX/ca-a.key", '-infiles',
                       ("$ca/fill.csr") x $NCERTS);
    die "openssl ca failed:\n$out" if $?;
}

my @fill;
{
    my $dir = "$TMP/certs/fill";
    make_path($dir);
    chmod 0755, $dir;

    for my $i (0 .. $NCERTS - 1) {
        my $serial = sprintf '%X', $FIRST_SERIAL + $i;
        my $src = "$TMP/ca/out/$serial.pem";
        -f $src or die "openssl ca made no $src\n";
        copy($src, "$dir/$serial.pem") or die "copy $src: $!";
        chmod 0644, "$dir/$serial.pem";
        push @fill, { serial => $serial,
                      fp => fingerprint_of("$dir/$serial.pem") };
    }

    # enrolled, so that each entry is a real grant: a user and a group
    my $sth = $dbh->prepare(
        'INSERT INTO mtls_identity.identity (username, groups, key_kind,'
        . " key_value) VALUES (?, '{api}', 'fingerprint', ?)");
    $dbh->begin_work;
    $sth->execute("svc-fill-$_->{serial}", $_->{fp}) for @fill;
    $dbh->commit;
}

progress("filling a $CFG{zone} zone");

my %fill_result;
{
    my $ua = HTTP::Tiny->new(timeout => 5);
    my $url = "http://127.0.0.1:$PORT{load_fill}/fill";
    my $ask = sub {
        my ($c) = @_;
        my $r = $ua->get("$url/$c->{serial}");
        return ($r->{status}, $r->{headers}{'x-cache'} // '');
    };

    # the listener must be up before anything is a hit
    within(10, sub { ($ask->($fill[0]))[1] eq 'hit' })
        or die "the fill zone does not start caching:\n"
               . $sut{fill}->error_log;

    my $failed = 0;
    for my $c (@fill[1 .. $#fill]) {
        my ($status) = $ask->($c);
        $failed++ unless $status == 200;
    }

    # newest first: hits move to the head of the LRU list and evict
    # nothing; the first miss is where evictions stopped
    my $hits = 0;
    my $boundary;
    for my $i (reverse 0 .. $#fill) {
        my ($status, $cache) = $ask->($fill[$i]);
        $failed++ unless $status == 200;
        if ($cache ne 'hit') {
            $boundary = $i;
            last;
        }
        $hits++;
    }

    %fill_result = (capacity => $hits, failed => $failed,
                    evicted => defined $boundary ? $boundary + 1 : 0);
}
$sut{fill}->stop;


# ---------------------------------------------------------------------
# the report

my @problems = map { my $n = $_; map { "$n: $_" } $_->problems }
    ($backend, $proxy, values %sut);

sub version_of {
    my ($re, @cmd) = @_;
    my $out = run_capture(@cmd);

    return $out =~ $re ? $1 : '?';
}

my $cpu = (read_file('/proc/cpuinfo') =~ /^model name\s*:\s*(.*)$/m)[0]
    // '?';
my $mem = (read_file('/proc/meminfo') =~ /^MemTotal:\s*(\d+)/m)[0] // 0;
my $cores = `nproc --all`;
chomp $cores;
my $commit = `git -C '$ROOT' describe --always --dirty 2>/dev/null`;
chomp $commit;

my %ver = (
    nginx => version_of(qr{nginx/(\S+)}, $Bench::Nginx::NGINX, '-v'),
    openssl => version_of(qr{OpenSSL (\S+)}, 'openssl', 'version'),
    pg => version_of(qr{(\d+\.\d+)}, Bench::Pg::bindir() . '/postgres',
                     '--version'),
    wrk => version_of(qr{wrk (\S+)}, 'wrk', '-v'),
    gunicorn => version_of(qr{gunicorn \(version (\S+)\)},
                           '/usr/bin/gunicorn', '--version'),
    python => version_of(qr{Python (\S+)}, '/usr/bin/python3',
                         '--version'),
    kernel => version_of(qr{(\S+)}, 'uname', '-r'),
);

say_('ngx_http_mtls_identity_module bench, ',
     strftime('%Y-%m-%d %H:%M UTC', gmtime));
say_(sprintf 'machine:  %s cores (%s), %.0f GiB, Linux %s', $cores, $cpu,
     $mem / 1024 / 1024, $ver{kernel});
say_("versions: nginx $ver{nginx}, OpenSSL $ver{openssl}, PostgreSQL"
     . " $ver{pg}, wrk $ver{wrk},");
say_("          gunicorn $ver{gunicorn}, Python $ver{python}; module"
     . " $commit");
say_('');
if ($Bench::Util::PIN) {
    say_($_) for split /\n/, <<'TEXT';
layout:   core 1, the server side: the nginx under test (1 worker),
          PostgreSQL, the auth service.  Core 0, the load side: wrk,
          the load-side proxy (plain HTTP in, mTLS keep-alive out), the
          backend and this script.  Apart, the load side's work neither
          lands on nor slows the server side, and core 1's busy time is
          the server side's (plus whatever else the machine runs there).
TEXT
} else {
    say_('layout:   one core only: nothing is pinned; the core1 column'
         . ' is the whole machine');
}
my $nice = (POSIX::nice(0) // 0) + 0;
say_("priority: every process of the bench at nice $nice (BENCH_NICE)")
    if $nice;
say_("load:     wrk -t1 -c$CFG{conns} through the load-side proxy;"
     . " $CFG{runs} runs x $CFG{duration} s per");
say_("          variant, interleaved, after a $CFG{warmup} s warm-up;"
     . ' medians of the runs.');
say_(sprintf 'at rest:  core 0 %.0f%% and core 1 %.0f%% busy before the'
             . ' runs, %.0f%% and %.0f%% after',
     $idle[0][$LOAD], $idle[0][$SERVER] // 0, $idle[1][$LOAD],
     $idle[1][$SERVER] // 0);
say_('          (work of others on this machine, measured while every'
     . ' server of');
say_('          the bench was idle)');
my $noisy = grep { $_->[$LOAD] > 5 || ($_->[$SERVER] // 0) > 5 } @idle;
say_('WARNING:  the machine was not idle: throughput, latency and the'
     . ' core 1') if $noisy;
say_('          column are disturbed; the CPU time of each process tree'
     . ' is less so') if $noisy;
say_('cpu:      utime+stime from /proc of each process tree over a run,'
     . ' divided');
say_('          by the requests wrk completed in it.');
say_('');
say_('variants, all on the same /usr/sbin/nginx binary:');
say_(sprintf '  %-6s %s', $_, $WHAT{$_}) for @VARIANTS;
say_('');
say_('checks before measuring (requests through the load-side proxy):');
say_($_) for @checks;
say_('');

say_('throughput and latency (medians)');
say_(sprintf '  %-7s %9s %9s %9s %8s %8s', 'variant', 'req/s', 'p50 ms',
     'p99 ms', 'core 1', 'errors');
for my $v (@VARIANTS) {
    my $m = $med{$v};
    say_(sprintf '  %-7s %9.0f %9.2f %9.2f %7.0f%% %8d', $v, $m->{rps},
         $m->{p50} // -1, $m->{p99} // -1, $m->{busy1}, $m->{bad});
}
say_('  core 1: how busy the server side\'s core was; errors: non-2xx'
     . ' answers and');
say_('  socket errors over all runs');
say_('');

say_('server-side CPU per request (microseconds, medians)');
say_(sprintf '  %-7s %8s %8s %8s %9s %8s %9s', 'variant', 'nginx',
     'postgres', 'auth', 'server', 'x floor', 'core 1');
for my $v (@VARIANTS) {
    my $m = $med{$v};
    my $part = sub {
        my ($k, $on) = @_;
        return sprintf $on ? '%8.1f' : '%8s',
                       $on ? $m->{$k} : sprintf('(%.1f)', $m->{$k});
    };
    say_(sprintf '  %-7s %8.1f %s %s %9.1f %8.2f %9.1f', $v,
         $m->{nginx}, $part->('pg', $v ne 'floor'),
         $part->('auth', $v eq 'auth'), $m->{server},
         $m->{server} / $med{floor}{server}, $m->{core1});
}
say_($_) for split /\n/, <<'TEXT';
  nginx: the nginx under test, master and worker; postgres: every
  PostgreSQL process; auth: gunicorn's arbiter and workers; (n): not
  part of the variant, shown as the level at rest; server: the sum of
  the parts that take part; x floor: server / the floor's server;
  core 1: all busy time of core 1 (user, system, irq, softirq) per
  request, a cross-check that includes what no process was charged.
TEXT
for my $v (@VARIANTS) {
    say_("  WARNING: $v: $med{$v}{bad} non-2xx answers or socket errors")
        if $med{$v}{bad};
}
say_("  WARNING: hit: $med{hit}{misses} runs ended without a cache hit")
    if $med{hit}{misses};
say_('');

my @targets;
my $hit_ratio = $med{hit}{nginx} / $med{floor}{nginx};
push @targets, [$hit_ratio <= 1.05, 'hit_nginx_cpu',
    sprintf('cache hit: nginx %.1f us/req = %.3f x floor %.1f'
            . ' (target <= 1.05)', $med{hit}{nginx}, $hit_ratio,
            $med{floor}{nginx})];
my $miss_ratio = $med{miss}{server} / $med{auth}{server};
push @targets, [$miss_ratio <= 1 / 3, 'miss_server_cpu',
    sprintf('miss: server %.1f us/req = %.3f x auth_request %.1f'
            . ' (target <= 0.333)', $med{miss}{server}, $miss_ratio,
            $med{auth}{server})];

my $rev_max = 0;
for my $i (@REV) {
    for (@{ $lat{$i} // [] }) { $rev_max = $_ if $_ > $rev_max }
}
my $rev_n = @{ $lat{rev1} // [] };
push @targets, [!$rev_fail && $rev_n == $CFG{rounds} && $rev_max <= 1000,
    'revocation', sprintf('revocation: max %.1f ms over 2 nginx x %d'
                          . ' rounds (target <= 1000 ms)', $rev_max,
                          $rev_n)];

# the same ratios within each round (runs of a round are adjacent in
# time): their spread shows how much the machine moved under the bench
sub round_ratios {
    my ($a, $b, $k) = @_;

    return map { $runs{$a}[$_]{$k} / $runs{$b}[$_]{$k} }
        0 .. $CFG{runs} - 1;
}
my @hit_rounds = round_ratios('hit', 'floor', 'nginx');
my @miss_rounds = round_ratios('miss', 'auth', 'server');

say_('targets (medians of the runs):');
say_(sprintf '%s  %s', $_->[0] ? 'PASS' : 'FAIL', $_->[2]) for @targets;
say_('  the same ratios round by round:');
say_('    hit/floor nginx  ', join ' ', map { sprintf '%.3f', $_ }
     @hit_rounds);
say_('    miss/auth server ', join ' ', map { sprintf '%.3f', $_ }
     @miss_rounds);
say_('');

say_("revocation latency: COMMIT of a revocation -> first 403 (ms),"
     . " $rev_n rounds");
say_(sprintf '%-8s %8s %8s %8s %8s', 'nginx', 'p50', 'p99', 'max',
     'timeouts');
for my $i (@REV) {
    my @l = @{ $lat{$i} // [] };
    say_(sprintf '%-8s %8.1f %8.1f %8.1f %8d', $i, percentile(50, @l),
         percentile(99, @l), percentile(100, @l),
         $lat{timeouts}{$i} // 0) if @l;
}
say_(sprintf '  COMMIT itself: p50 %.2f ms, max %.2f ms; two workers'
             . ' per nginx, polled', percentile(50, @commit_ms) // 0,
             percentile(100, @commit_ms) // 0);
say_('  alternately through the load-side proxy (one request ~0.3 ms)');
say_("  FAILED: $rev_fail") if $rev_fail;
say_('');

my $cap = $fill_result{capacity};
my $per = $cap ? $ZONE_BYTES / $cap : 0;
my $slot = 8;
$slot *= 2 while $slot * 2 <= $per;
say_("memory per cached entry: a zone of $CFG{zone} ($ZONE_BYTES bytes),"
     . " $NCERTS certificates");
say_(sprintf '  capacity %d entries: the oldest %d were evicted', $cap,
     $fill_result{evicted});
if ($cap) {
    say_(sprintf '  %d / %d = %.0f bytes per entry in this zone. Entries'
                 . ' take %d-byte', $ZONE_BYTES, $cap, $per, $slot);
    say_(sprintf '  slab slots (%d per 4 KiB page): %d bytes hold'
                 . ' entries, %d bytes', 4096 / $slot, $cap * $slot,
         $ZONE_BYTES - $cap * $slot);
    say_('  are slab bookkeeping, the zone header and the slack of the'
         . ' last page');
}
say_("  WARNING: $fill_result{failed} fill requests did not answer 200")
    if $fill_result{failed};
say_('');

say_('error log alerts: ', @problems ? scalar(@problems) : 'none');
say_("  $_") for @problems;
say_('');

for my $v (@VARIANTS) {
    my $m = $med{$v};
    say_(sprintf 'RESULT %s.%s %.2f %s', $v, @$_)
        for ['rps', $m->{rps}, 'req/s'],
            ['p99', $m->{p99} // -1, 'ms'],
            ['nginx_cpu', $m->{nginx}, 'us/req'],
            ['pg_cpu', $m->{pg}, 'us/req'],
            ['auth_cpu', $m->{auth}, 'us/req'],
            ['server_cpu', $m->{server}, 'us/req'],
            ['server_vs_floor', $m->{server} / $med{floor}{server},
             'ratio'],
            ['core1_cpu', $m->{core1}, 'us/req'];
}
say_(sprintf 'RESULT hit.nginx_vs_floor %.4f ratio', $hit_ratio);
say_(sprintf 'RESULT miss.server_vs_auth %.4f ratio', $miss_ratio);
for (['hit.nginx_vs_floor', @hit_rounds],
     ['miss.server_vs_auth', @miss_rounds])
{
    my ($name, @v) = @$_;
    @v = sort { $a <=> $b } @v;
    say_(sprintf 'RESULT %s.round_min %.4f ratio', $name, $v[0]);
    say_(sprintf 'RESULT %s.round_max %.4f ratio', $name, $v[-1]);
}
for my $i (@REV) {
    my @l = @{ $lat{$i} // [] };
    next unless @l;
    say_(sprintf 'RESULT revoke.%s.%s %.2f ms', $i, @$_)
        for ['p50', percentile(50, @l)], ['p99', percentile(99, @l)],
            ['max', percentile(100, @l)];
}
say_(sprintf 'RESULT revoke.max %.2f ms', $rev_max);
say_(sprintf 'RESULT cache.capacity %d entries', $cap);
say_(sprintf 'RESULT cache.bytes_per_entry %.1f bytes', $per);
say_(sprintf 'TARGET %s %s', $_->[1], $_->[0] ? 'PASS' : 'FAIL')
    for @targets;
say_('');
say_($_) for @raw;
for my $i (@REV) {
    say_("RAW revoke.$i ms ", join ' ',
         map { sprintf '%.1f', $_ } @{ $lat{$i} // [] });
}

my $text = join("\n", @report) . "\n";
print $text;

if ($SAVE) {
    my $dir = "$ROOT/bench/results";
    make_path($dir);
    my $file = "$dir/" . strftime('%Y-%m-%d-%H%M', gmtime) . '.txt';
    write_file($file, $text);
    progress("report written to $file");
}

# stop everything before the temporary directory goes
$proxy->stop;
$backend->stop;
$_->stop for values %sut;
$auth->stop;
$pg->stop;

exit 0;
