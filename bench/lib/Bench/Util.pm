package Bench::Util;

# Small helpers of the bench: running commands, loopback ports, files,
# statistics.

use strict;
use warnings;

use Exporter qw(import);
use File::Temp ();
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(run_capture free_port wait_port write_file read_file
                    pinned median percentile spawn);

# whether the two sides are pinned to cores of their own
our $PIN = `nproc --all 2>/dev/null` >= 2;

# a command, prefixed to run on one core (unless there is only one)
sub pinned {
    my ($core, @cmd) = @_;

    return @cmd unless $PIN;
    return ('taskset', '-c', $core, @cmd);
}

# runs a command; returns its stdout and stderr together, $? set.  The
# output goes through a file: a daemonised server keeps its stdout.
sub run_capture {
    my (@cmd) = @_;
    my ($fh, $file) = File::Temp::tempfile('mtls-bench-out-XXXXXX',
                                          TMPDIR => 1, UNLINK => 1);

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null' or die $!;
        open STDOUT, '>&', $fh or die $!;
        open STDERR, '>&', $fh or die $!;
        exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
    }
    waitpid $pid, 0;
    my $status = $?;

    my $out = read_file($file);
    close $fh;
    unlink $file;

    $? = $status;
    return $out;
}

# starts a long-running command in the background, its output appended
# to a log file; returns a guard whose stop() (or destruction) sends
# TERM, then KILL after 10 seconds
sub spawn {
    my ($log, $env, @cmd) = @_;

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $ENV{$_} = $env->{$_} for keys %$env;
        open STDIN, '<', '/dev/null' or die $!;
        open STDOUT, '>>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT or die $!;
        exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
    }

    return bless { pid => $pid }, 'Bench::Util::Child';
}

sub free_port {
    my $sock = IO::Socket::INET->new(
        Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', ReuseAddr => 1,
    ) or die "no free port: $!";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

# waits until something listens on a loopback port, at most `seconds`
sub wait_port {
    my ($port, $seconds) = @_;
    my $until = time + ($seconds // 10);

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

sub write_file {
    my ($file, $text, $mode) = @_;

    open my $fh, '>', $file or die "$file: $!";
    print $fh $text;
    close $fh or die "$file: $!";
    chmod $mode, $file if defined $mode;
}

sub read_file {
    my ($file) = @_;

    open my $fh, '<', $file or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

sub median {
    my @v = sort { $a <=> $b } grep { defined } @_;

    return undef unless @v;
    return $v[$#v / 2] if @v % 2;
    return ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

# the nearest-rank percentile p (0-100) of a list
sub percentile {
    my ($p, @v) = @_;

    @v = sort { $a <=> $b } grep { defined } @v;
    return undef unless @v;

    my $rank = int($p / 100 * @v + 0.999999);
    $rank = 1 if $rank < 1;
    $rank = @v if $rank > @v;
    return $v[$rank - 1];
}


package Bench::Util::Child;

use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

sub pid { $_[0]{pid} }

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;

    kill 'TERM', $pid;

    my $until = time + 10;
    while (time < $until) {
        return if waitpid($pid, WNOHANG) != 0;
        sleep 0.05;
    }

    kill 'KILL', $pid;
    waitpid $pid, 0;
}

sub DESTROY {
    my ($self) = @_;

    local ($?, $@);
    $self->stop;
}

1;
