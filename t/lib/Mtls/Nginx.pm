package Mtls::Nginx;

# Starts and stops a real nginx, with the module loaded, in a temporary
# prefix on free loopback ports.
#
#   my $nginx = Mtls::Nginx->new(http => $conf);   # the http{} body
#   $nginx->start;
#   ... requests to 127.0.0.1:$nginx->port ...
#   is_deeply [$nginx->problems], [], 'no alert or emerg';
#   $nginx->stop;
#
# Placeholders in the configuration text:
#   %%PORT%%, %%PORT_name%%   free loopback ports (as many as named)
#   %%FIXTURES%%               tests/fixtures, the test certificates
#   %%PREFIX%%                 the temporary prefix
#   %%MODULE%%                 the module under test
#
# NGINX_BIN names the nginx binary (default /usr/sbin/nginx), MTLS_MODULE the
# module (default build/ngx_http_mtls_identity_module.so); MTLS_KEEP=1
# keeps the prefix for a look after the run.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Scalar::Util qw(weaken);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

our $ROOT = abs_path(dirname(__FILE__) . '/../../..');
our $FIXTURES = "$ROOT/tests/fixtures";
our $NGINX = $ENV{NGINX_BIN} || '/usr/sbin/nginx';
our $MODULE = $ENV{MTLS_MODULE}
    || "$ROOT/build/ngx_http_mtls_identity_module.so";

# every instance still alive when the test ends, stopped before
# File::Temp's own END block removes their directories
my @live;

END {
    local $?;

    for my $self (grep { defined } @live) {
        eval { $self->stop };
    }
}

sub new {
    my ($class, %args) = @_;

    my $prefix = tempdir('mtls-nginx-XXXXXX', TMPDIR => 1,
                         CLEANUP => !$ENV{MTLS_KEEP});

    # workers run as an unprivileged user when the tests run as root
    chmod 0755, $prefix;
    make_path("$prefix/logs", "$prefix/conf", "$prefix/temp");

    my $self = bless {
        prefix => $prefix,
        http => $args{http} // '',
        main => $args{main} // '',
        load_module => $args{load_module} // 1,
        log_level => $ENV{MTLS_DEBUG} ? 'debug' : 'info',
        ports => {},
        running => 0,
    }, $class;

    $self->port;
    push @live, $self;
    weaken $live[-1];

    return $self;
}

# the port called NAME (default: the main one), picked on first use
sub port {
    my ($self, $name) = @_;

    $name //= '';
    $self->{ports}{$name} //= free_port();
    return $self->{ports}{$name};
}

sub prefix { $_[0]{prefix} }

sub free_port {
    my $sock = IO::Socket::INET->new(
        Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', ReuseAddr => 1,
    ) or die "no free port: $!";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

# the configuration with placeholders replaced
sub expand {
    my ($self, $text) = @_;

    $text =~ s/%%PORT_(\w+)%%/$self->port($1)/ge;
    $text =~ s/%%PORT%%/$self->port/ge;
    $text =~ s/%%FIXTURES%%/$FIXTURES/g;
    $text =~ s/%%PREFIX%%/$self->{prefix}/g;
    $text =~ s/%%MODULE%%/$MODULE/g;
    return $text;
}

sub config_text {
    my ($self) = @_;
    my $load = $self->{load_module} ? "load_module %%MODULE%%;\n" : '';

    return $self->expand(<<"CONF");
${load}worker_processes 1;
error_log logs/error.log $self->{log_level};
pid logs/nginx.pid;

events {
    worker_connections 256;
}

$self->{main}

http {
    access_log logs/access.log;

    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;

$self->{http}
}
CONF
}

sub write_config {
    my ($self, %args) = @_;

    $self->{http} = $args{http} if defined $args{http};
    $self->{main} = $args{main} if defined $args{main};

    open my $fh, '>', "$self->{prefix}/conf/nginx.conf" or die $!;
    print $fh $self->config_text;
    close $fh;
}

sub command {
    my ($self, @args) = @_;

    return ($NGINX, '-p', "$self->{prefix}/", '-c', 'conf/nginx.conf',
            '-e', 'logs/error.log', @args);
}

# runs nginx -t; returns (passed, everything it printed)
sub test_config {
    my ($self, %args) = @_;

    $self->write_config(%args);

    my $out = run_capture($self->command('-t'));
    return ($? == 0, $out);
}

# runs a command; returns what it printed on stdout and stderr together.
# The output goes through a file: a daemonised nginx keeps its stdout.
sub run_capture {
    my (@cmd) = @_;
    my ($fh, $file) = File::Temp::tempfile('mtls-out-XXXXXX', TMPDIR => 1,
                                          UNLINK => 1);

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null' or die $!;
        open STDOUT, '>&', $fh or die $!;
        open STDERR, '>&', $fh or die $!;
        exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
    }
    waitpid $pid, 0;
    my $status = $?;

    open my $in, '<', $file or die $!;
    local $/;
    my $out = <$in> // '';
    close $in;
    close $fh;
    unlink $file;

    $? = $status;
    return $out;
}

sub pid {
    my ($self) = @_;

    open my $fh, '<', "$self->{prefix}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    close $fh;
    chomp $pid if defined $pid;
    return $pid;
}

sub start {
    my ($self, %args) = @_;

    $self->write_config(%args);

    my $out = run_capture($self->command);
    if ($? != 0) {
        die "nginx did not start:\n$out\n" . $self->error_log;
    }

    $self->{running} = 1;

    for my $port (values %{ $self->{ports} }) {
        $self->wait_for_port($port) if $self->{listens}{$port} // 1;
    }

    return $self;
}

sub wait_for_port {
    my ($self, $port) = @_;
    my $until = time + 10;

    while (time < $until) {
        my $sock = IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp');
        if ($sock) {
            close $sock;
            return 1;
        }
        sleep 0.05;
    }

    return 0;
}

# marks a port as not listened on, so start() does not wait for it
sub idle_port {
    my ($self, $name) = @_;
    my $port = $self->port($name);

    $self->{listens}{$port} = 0;
    return $port;
}

# sends a signal through `nginx -s` (reload, reopen, quit, stop)
sub signal {
    my ($self, $signal) = @_;

    my $out = run_capture($self->command('-s', $signal));
    die "nginx -s $signal failed:\n$out" if $? != 0;
}

sub reload {
    my ($self, %args) = @_;

    # wait for the new workers' start-up line in the error log
    my $before = () = $self->error_log =~ /start worker process/g;

    $self->write_config(%args);
    $self->signal('reload');

    my $until = time + 10;
    while (time < $until) {
        my $now = () = $self->error_log =~ /start worker process/g;
        return 1 if $now > $before;
        sleep 0.05;
    }

    return 0;
}

sub stop {
    my ($self) = @_;

    return unless $self->{running};
    $self->{running} = 0;

    my $pid = $self->pid or return;
    kill 'QUIT', $pid;

    my $until = time + 10;
    while (time < $until && kill 0, $pid) {
        sleep 0.05;
    }

    kill 'KILL', $pid if kill 0, $pid;
}

sub error_log {
    my ($self) = @_;

    open my $fh, '<', "$self->{prefix}/logs/error.log" or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

sub access_log {
    my ($self, $name) = @_;

    $name //= 'access.log';
    open my $fh, '<', "$self->{prefix}/logs/$name" or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

# error log lines at alert or emerg level, or a crashed worker
sub problems {
    my ($self) = @_;

    return grep { /\[(?:alert|emerg)\]/ || /exited on signal/ }
        split /\n/, $self->error_log;
}

# the TLS lines of a server that asks for client certificates
#   tls(verify => 'on', trust => 'trust-a.pem', extra => '...')
sub tls {
    my (%o) = @_;
    my $trust = $o{trust} // 'trust-a.pem';
    my $verify = $o{verify} // 'on';

    return <<"TLS";
        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate %%FIXTURES%%/$trust;
        ssl_verify_client $verify;
        ssl_verify_depth 2;
TLS
}

# error log lines at error level or above
sub errors {
    my ($self) = @_;

    return grep { /\[(?:error|crit|alert|emerg)\]/ }
        split /\n/, $self->error_log;
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    $self->stop;
}

1;
