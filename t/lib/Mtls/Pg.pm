package Mtls::Pg;

# Starts and stops a real PostgreSQL cluster for one test file, in a
# temporary directory, listening on 127.0.0.1 at a free port, with the
# module's schema applied.
#
#   my $pg = Mtls::Pg->new;          # initdb, start, apply sql/schema.sql
#   $pg->sql("INSERT INTO mtls_identity.identity ...");
#   my @rows = $pg->rows("SELECT ...");   # list of array refs
#   $pg->conninfo;                   # for mtls_identity_db
#   $pg->stop; $pg->start;           # a database that goes away
#
# As root, initdb and postgres refuse to run: the cluster then belongs to
# the "postgres" system user and every server command runs through
# runuser.  The cluster listens on loopback TCP, not on a socket in the
# temporary directory, because nginx's workers run as an unprivileged
# user.  PG_BINDIR overrides where initdb and pg_ctl are found.

use strict;
use warnings;

use File::Temp qw(tempdir);
use Scalar::Util qw(weaken);
use Time::HiRes qw(sleep time);

use Mtls::Nginx;

our $SCHEMA = "$Mtls::Nginx::ROOT/sql/schema.sql";

sub bindir {
    return $ENV{PG_BINDIR} if $ENV{PG_BINDIR};

    for my $dir (reverse sort glob '/usr/lib/postgresql/*/bin') {
        return $dir if -x "$dir/initdb";
    }

    my $pg_config = `pg_config --bindir 2>/dev/null`;
    chomp $pg_config;
    return $pg_config if $pg_config && -x "$pg_config/initdb";

    die "no PostgreSQL server binaries: install postgresql-15\n";
}

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

    my $dir = tempdir('mtls-pg-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{MTLS_KEEP});
    my $self = bless {
        dir => $dir,
        data => "$dir/data",
        port => Mtls::Nginx::free_port(),
        bindir => bindir(),
        user => $> == 0 ? 'postgres' : undef,
        running => 0,
        settings => $args{settings} // {},
    }, $class;

    if ($self->{user}) {
        my (undef, undef, $uid, $gid) = getpwnam $self->{user}
            or die "no '$self->{user}' system user to run PostgreSQL\n";
        chown $uid, $gid, $dir or die "chown $dir: $!";
    }

    $self->run_server_command('initdb', '-D', $self->{data}, '-U',
                              'postgres', '-A', 'trust', '-E', 'UTF8',
                              '--locale=C', '--no-sync');
    $self->write_settings;
    $self->start;
    $self->sql_file($SCHEMA) unless $args{no_schema};

    push @live, $self;
    weaken $live[-1];

    return $self;
}

sub port { $_[0]{port} }

# the libpq conninfo nginx uses; database and user are postgres
sub conninfo {
    my ($self, %extra) = @_;
    my %kv = (host => '127.0.0.1', port => $self->{port},
              dbname => 'postgres', user => 'postgres', %extra);

    return join ' ', map { "$_=$kv{$_}" } sort keys %kv;
}

sub write_settings {
    my ($self) = @_;
    my %settings = (
        listen_addresses => "'127.0.0.1'",
        port => $self->{port},
        unix_socket_directories => "''",
        # no data survives a crash of the machine, but every commit
        # survives `pg_ctl stop -m immediate`: the tests stop it so
        fsync => 'off',
        full_page_writes => 'off',
        max_connections => 100,
        shared_buffers => "'32MB'",
        log_min_messages => 'warning',
        %{ $self->{settings} },
    );

    my $conf = "$self->{data}/postgresql.auto.conf";
    open my $fh, '>>', $conf or die "$conf: $!";
    print $fh "$_ = $settings{$_}\n" for sort keys %settings;
    close $fh;
}

# runs a server binary as the cluster's owner
sub run_server_command {
    my ($self, $tool, @args) = @_;
    my @cmd = ("$self->{bindir}/$tool", @args);

    unshift @cmd, 'runuser', '-u', $self->{user}, '--' if $self->{user};

    my $out = Mtls::Nginx::run_capture(@cmd);
    die "@cmd failed:\n$out" if $? != 0;
    return $out;
}

sub start {
    my ($self) = @_;

    return if $self->{running};

    $self->run_server_command('pg_ctl', '-D', $self->{data}, '-l',
                              "$self->{dir}/server.log", '-w', '-t', '30',
                              'start');
    $self->{running} = 1;
}

# mode: fast (default) or immediate, the way a crash looks to clients
sub stop {
    my ($self, $mode) = @_;

    return unless $self->{running};
    $self->{running} = 0;
    $self->run_server_command('pg_ctl', '-D', $self->{data}, '-m',
                              $mode // 'fast', '-w', 'stop');
}

sub server_log {
    my ($self) = @_;

    open my $fh, '<', "$self->{dir}/server.log" or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

sub psql_command {
    my ($self, @args) = @_;

    return ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
            '-p', $self->{port}, '-U', 'postgres', '-d', 'postgres', @args);
}

# runs SQL; dies with psql's message when it fails
sub sql {
    my ($self, $sql) = @_;

    my $out = Mtls::Nginx::run_capture($self->psql_command('-c', $sql));
    die "SQL failed: $sql\n$out" if $? != 0;
    return $out;
}

# runs SQL and returns (ok, psql's output): for statements meant to fail
sub try_sql {
    my ($self, $sql) = @_;

    my $out = Mtls::Nginx::run_capture($self->psql_command('-c', $sql));
    return ($? == 0, $out);
}

sub sql_file {
    my ($self, $file) = @_;

    my $out = Mtls::Nginx::run_capture($self->psql_command('-f', $file));
    die "psql -f $file failed:\n$out" if $? != 0;
    return $out;
}

# the rows of a query, each an array ref of column values
sub rows {
    my ($self, $sql) = @_;

    my $out = Mtls::Nginx::run_capture(
        $self->psql_command('-A', '-t', '-F', "\t", '-c', $sql));
    die "SQL failed: $sql\n$out" if $? != 0;
    return map { [split /\t/, $_, -1] } split /\n/, $out;
}

# the one value of a query
sub value {
    my ($self, $sql) = @_;
    my ($row) = $self->rows($sql);

    return $row ? $row->[0] : undef;
}

# a quoted SQL literal
sub quote {
    my (undef, $text) = @_;

    return 'NULL' unless defined $text;
    (my $q = $text) =~ s/'/''/g;
    return "'$q'";
}

# enrols a certificate: (username, kind, value, issuer dn, issuer key id,
# extra "column => SQL expression" pairs); returns the row id
sub enrol {
    my ($self, %row) = @_;
    my %cols = (
        username => $self->quote($row{username}),
        key_kind => $self->quote($row{kind} // 'fingerprint'),
        key_value => $self->quote($row{value}),
        issuer_dn => $self->quote($row{issuer_dn}),
        issuer_key_id => $self->quote($row{issuer_key_id}),
        %{ $row{sql} // {} },
    );
    $cols{groups} = $self->quote('{' . join(',', map { qq{"$_"} }
                                               @{ $row{groups} }) . '}')
        if $row{groups};

    my @names = sort keys %cols;
    return $self->value(
        'INSERT INTO mtls_identity.identity (' . join(', ', @names)
        . ') VALUES (' . join(', ', map { $cols{$_} } @names)
        . ') RETURNING id');
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    local $@;
    eval { $self->stop };
}

1;
