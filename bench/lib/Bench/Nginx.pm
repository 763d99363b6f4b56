package Bench::Nginx;

# One nginx of the bench: a prefix of its own under the run's temporary
# directory, a configuration given in full, pinned to one core.
#
#   my $n = Bench::Nginx->new(dir => $tmp, name => 'floor', core => 1,
#                             conf => $text, ports => [$port]);
#   $n->start;  $n->master_pid;  $n->stop;
#
# The configuration's "%%PREFIX%%" becomes the prefix.  NGINX_BIN names
# the binary (default /usr/sbin/nginx).

use strict;
use warnings;

use File::Path qw(make_path);
use Time::HiRes qw(sleep time);

use Bench::Util qw(run_capture wait_port write_file read_file pinned);

our $NGINX = $ENV{NGINX_BIN} || '/usr/sbin/nginx';

sub new {
    my ($class, %a) = @_;
    my $prefix = "$a{dir}/$a{name}";

    make_path("$prefix/logs", "$prefix/conf", "$prefix/temp");
    chmod 0755, $prefix;

    return bless { %a, prefix => $prefix, running => 0 }, $class;
}

sub name { $_[0]{name} }
sub prefix { $_[0]{prefix} }

sub command {
    my ($self, @args) = @_;

    return ($NGINX, '-p', "$self->{prefix}/", '-c', 'conf/nginx.conf',
            '-e', 'logs/error.log', @args);
}

sub start {
    my ($self) = @_;

    (my $conf = $self->{conf}) =~ s/%%PREFIX%%/$self->{prefix}/g;
    write_file("$self->{prefix}/conf/nginx.conf", $conf);

    my $out = run_capture(pinned($self->{core}, $self->command));
    die "nginx $self->{name} did not start:\n$out\n" . $self->error_log
        if $? != 0;

    $self->{running} = 1;

    for my $port (@{ $self->{ports} // [] }) {
        wait_port($port, 10)
            or die "nginx $self->{name} does not listen on $port\n"
                   . $self->error_log;
    }

    return $self;
}

sub master_pid {
    my ($self) = @_;
    my $pid = read_file("$self->{prefix}/logs/nginx.pid");

    chomp $pid;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

sub error_log { read_file("$_[0]{prefix}/logs/error.log") }

# error log lines at alert or emerg level, or a crashed worker
sub problems {
    my ($self) = @_;

    return grep { /\[(?:alert|emerg)\]/ || /exited on signal/ }
        split /\n/, $self->error_log;
}

sub stop {
    my ($self) = @_;

    return unless $self->{running};
    $self->{running} = 0;

    my $pid = $self->master_pid or return;
    kill 'QUIT', $pid;

    my $until = time + 10;
    sleep 0.05 while time < $until && kill 0, $pid;
    kill 'KILL', $pid if kill 0, $pid;
}

sub DESTROY {
    my ($self) = @_;

    local ($?, $@);
    $self->stop;
}

1;
