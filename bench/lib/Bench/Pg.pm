package Bench::Pg;

# A private PostgreSQL cluster for the bench: initdb in the run's
# temporary directory, loopback TCP on a free port, pinned to one core,
# the module's schema applied.  As root, initdb and postgres refuse to
# run, so the cluster belongs to the "postgres" system user and every
# server command goes through runuser.
#
#   my $pg = Bench::Pg->new(dir => $tmp, core => 1, schema => $file);
#   $pg->dbh;  $pg->conninfo;  $pg->postmaster_pid;  $pg->stop;

use strict;
use warnings;

use DBI;
use File::Path qw(make_path);

use Bench::Util qw(run_capture free_port write_file read_file pinned);

sub bindir {
    return $ENV{PG_BINDIR} if $ENV{PG_BINDIR};

    for my $dir (reverse sort glob '/usr/lib/postgresql/*/bin') {
        return $dir if -x "$dir/initdb";
    }

    die "no PostgreSQL server binaries: install postgresql-15\n";
}

sub new {
    my ($class, %a) = @_;
    my $dir = "$a{dir}/pg";

    make_path($dir);

    my $self = bless {
        dir => $dir,
        data => "$dir/data",
        core => $a{core},
        port => free_port(),
        bindir => bindir(),
        user => $> == 0 ? 'postgres' : undef,
        running => 0,
    }, $class;

    if ($self->{user}) {
        my (undef, undef, $uid, $gid) = getpwnam $self->{user}
            or die "no '$self->{user}' system user to run PostgreSQL\n";
        chown $uid, $gid, $dir or die "chown $dir: $!";
    }

    $self->server_command('initdb', '-D', $self->{data}, '-U', 'postgres',
                          '-A', 'trust', '-E', 'UTF8', '--locale=C',
                          '--no-sync');

    # a bench database: nothing survives a crash of the machine
    my %settings = (
        listen_addresses => "'127.0.0.1'",
        port => $self->{port},
        unix_socket_directories => "''",
        fsync => 'off',
        synchronous_commit => 'off',
        full_page_writes => 'off',
        max_connections => 100,
        shared_buffers => "'64MB'",
        log_min_messages => 'warning',
    );
    open my $fh, '>>', "$self->{data}/postgresql.auto.conf" or die $!;
    print $fh "$_ = $settings{$_}\n" for sort keys %settings;
    close $fh;

    $self->server_command('pg_ctl', '-D', $self->{data}, '-l',
                          "$dir/server.log", '-w', '-t', '30', 'start');
    $self->{running} = 1;

    my $out = run_capture('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
                          '-h', '127.0.0.1', '-p', $self->{port},
                          '-U', 'postgres', '-d', 'postgres',
                          '-f', $a{schema});
    die "psql -f $a{schema} failed:\n$out" if $? != 0;

    return $self;
}

# runs a server binary as the cluster's owner, on the server's core
sub server_command {
    my ($self, $tool, @args) = @_;
    my @cmd = ("$self->{bindir}/$tool", @args);

    unshift @cmd, 'runuser', '-u', $self->{user}, '--' if $self->{user};

    my $out = run_capture(pinned($self->{core}, @cmd));
    die "@cmd failed:\n$out" if $? != 0;
    return $out;
}

sub port { $_[0]{port} }

sub conninfo {
    my ($self) = @_;

    return "host=127.0.0.1 port=$self->{port} dbname=postgres"
           . " user=postgres";
}

# a new DBI handle: RaiseError, AutoCommit as asked (default on)
sub dbh {
    my ($self, %o) = @_;

    return DBI->connect(
        "dbi:Pg:host=127.0.0.1;port=$self->{port};dbname=postgres",
        'postgres', '',
        { RaiseError => 1, PrintError => 0,
          AutoCommit => $o{autocommit} // 1 });
}

sub postmaster_pid {
    my ($self) = @_;
    my ($pid) = split /\n/, read_file("$self->{data}/postmaster.pid");

    return defined $pid && $pid =~ /^\d+$/ ? $pid : undef;
}

sub server_log { read_file("$_[0]{dir}/server.log") }

sub stop {
    my ($self) = @_;

    return unless $self->{running};
    $self->{running} = 0;
    eval {
        $self->server_command('pg_ctl', '-D', $self->{data}, '-m', 'fast',
                              '-w', 'stop');
    };
    warn $@ if $@;
}

sub DESTROY {
    my ($self) = @_;

    local ($?, $@);
    $self->stop;
}

1;
