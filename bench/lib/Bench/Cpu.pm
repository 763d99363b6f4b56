package Bench::Cpu;

# CPU time of process trees and of cores, from /proc.
#
# A tree is a root process (an nginx master, the postmaster, gunicorn's
# arbiter) and its children.  Its CPU time over a window is
#
#   sum of utime+stime of the processes alive at the end
#   - the same sum over the processes alive at the start
#   + what the root gained in cutime+cstime (children it reaped)
#
# so a child that started or exited inside the window counts for the part
# of its life inside it.  Grandchildren are not followed (none of the
# bench's servers have busy ones).
#
#   my $s0 = Bench::Cpu::snapshot(nginx => $pid, pg => $pid2);
#   ... load ...
#   my $s1 = Bench::Cpu::snapshot(nginx => $pid, pg => $pid2);
#   my $d = Bench::Cpu::delta($s0, $s1);
#   $d->{tree}{nginx}   seconds of CPU
#   $d->{core}[1]       seconds core 1 was busy (user, nice, system,
#                       irq, softirq, steal)
#   $d->{wall}          seconds between the snapshots

use strict;
use warnings;

use POSIX ();
use Time::HiRes qw(time);

my $HZ = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;

# pid => [ppid, utime+stime, cutime+cstime], in clock ticks
sub processes {
    my %table;

    opendir my $dh, '/proc' or die "/proc: $!";
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $line = <$fh>;
        close $fh;
        next unless defined $line;

        # the command name may hold spaces and parentheses
        my $rest = substr $line, rindex($line, ')') + 2;
        my @f = split ' ', $rest;

        # @f starts at field 3 (state): ppid is field 4, utime 14 ...
        $table{$pid} = [$f[1], $f[11] + $f[12], $f[13] + $f[14]];
    }
    closedir $dh;

    return \%table;
}

sub cores {
    my @busy;

    open my $fh, '<', '/proc/stat' or die "/proc/stat: $!";
    while (my $line = <$fh>) {
        next unless $line =~ /^cpu(\d+)\s+(.*)/;
        my ($user, $nice, $system, $idle, $iowait, $irq, $softirq,
            $steal) = split ' ', $2;
        $busy[$1] = $user + $nice + $system + $irq + $softirq
                    + ($steal // 0);
    }
    close $fh;

    return \@busy;
}

sub snapshot {
    my (%roots) = @_;
    my $table = processes();
    my %trees;

    for my $name (keys %roots) {
        my $root = $roots{$name};
        next unless defined $root && $table->{$root};

        my %pids = ($root => $table->{$root}[1]);
        for my $pid (keys %$table) {
            $pids{$pid} = $table->{$pid}[1]
                if $table->{$pid}[0] == $root;
        }

        $trees{$name} = { reaped => $table->{$root}[2], pids => \%pids,
                          processes => scalar keys %pids };
    }

    return { time => time, trees => \%trees, cores => cores() };
}

sub sum { my $s = 0; $s += $_ for @_; return $s }

sub delta {
    my ($s0, $s1) = @_;
    my %tree;

    for my $name (keys %{ $s1->{trees} }) {
        my $a = $s0->{trees}{$name} or next;
        my $b = $s1->{trees}{$name};

        my $ticks = sum(values %{ $b->{pids} })
                    - sum(values %{ $a->{pids} })
                    + $b->{reaped} - $a->{reaped};
        $tree{$name} = $ticks / $HZ;
    }

    my @core = map { ($s1->{cores}[$_] - $s0->{cores}[$_]) / $HZ }
               0 .. $#{ $s1->{cores} };

    return { tree => \%tree, core => \@core,
             wall => $s1->{time} - $s0->{time} };
}

1;
