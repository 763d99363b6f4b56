package Mtls::Django;

# Starts and stops the example Django application (examples/django) under
# gunicorn for one test file: its own SQLite database and secret key in a
# temporary directory, Django's tables migrated, users and groups created
# with "manage.py mtls_setup", gunicorn on a free loopback port.
#
#   my $django = Mtls::Django->new(users => [
#       'svc-alpha' => ['api'], 'svc-ops' => ['api', 'reports'],
#   ]);
#   ... proxy_pass http://127.0.0.1:@{[ $django->port ]}; ...
#   my $seen = Mtls::Django::json($response->{body});  # /echo, /whoami
#   $django->echo_count;            # requests that reached /echo so far
#   $django->get('/whoami', 'X-Mtls-Identity: x')   # straight to gunicorn
#
# DESTROY stops gunicorn.  DJANGO_PYTHON names the interpreter (default
# /usr/bin/python3: Debian's python3-django and gunicorn work with no
# other); MTLS_KEEP=1 keeps the directory, with gunicorn's log.

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Scalar::Util qw(weaken);
use Time::HiRes qw(sleep time);

use Mtls::Nginx;

our $APP = "$Mtls::Nginx::ROOT/examples/django";
our $PYTHON = $ENV{DJANGO_PYTHON} || '/usr/bin/python3';

# every instance not yet destroyed, for the END block below
my @instances;

# the names the reference deployment's servers answer to
our @HOSTS = qw(api.example.test public.example.test);

sub new {
    my ($class, %args) = @_;

    my $dir = tempdir('mtls-django-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{MTLS_KEEP});
    my $self = bless {
        dir => $dir,
        port => Mtls::Nginx::free_port(),
        pid => undef,
        env => {
            DJANGO_SECRET_KEY => random_hex(32),
            MTLS_DJANGO_DB => "$dir/db.sqlite3",
            # 127.0.0.1 for the harness's own requests, straight to gunicorn
            DJANGO_ALLOWED_HOSTS => join(',', @{ $args{hosts} // \@HOSTS },
                                         '127.0.0.1'),
            DJANGO_LOG_LEVEL => 'INFO',
        },
    }, $class;

    push @instances, $self;
    weaken $instances[-1];

    $self->manage('migrate', '--noinput', '--verbosity', '0');
    $self->users(@{ $args{users} }) if $args{users};
    $self->start;

    return $self;
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }

sub random_hex {
    my ($bytes) = @_;

    open my $fh, '<:raw', '/dev/urandom' or die "/dev/urandom: $!";
    read($fh, my $raw, $bytes) == $bytes or die "/dev/urandom: short read";
    close $fh;
    return unpack 'H*', $raw;
}

# runs "manage.py COMMAND ARGS..." with the app's environment; dies with
# its output when it fails
sub manage {
    my ($self, @args) = @_;

    local @ENV{keys %{ $self->{env} }} = values %{ $self->{env} };
    my $out = Mtls::Nginx::run_capture($PYTHON, "$APP/manage.py", @args);
    die "manage.py @args failed:\n$out" if $? != 0;
    return $out;
}

# creates or updates Django users, each in exactly the groups listed:
#   $django->users(alice => ['api', 'reports'], bob => []);
sub users {
    my ($self, @pairs) = @_;
    my @args;

    while (my ($name, $groups) = splice @pairs, 0, 2) {
        push @args, '--user', $name;
        push @args, '--groups', join ',', map { percent($_) } @$groups
            if $groups && @$groups;
    }

    return $self->manage('mtls_setup', @args);
}

# a group name as mtls_setup reads it (and as the module sends it)
sub percent {
    my ($text) = @_;

    $text =~ s/([%,"\\\x00-\x1f\x7f-\xff])/sprintf '%%%02X', ord $1/ge;
    return $text;
}

sub start {
    my ($self) = @_;

    return if $self->{pid};

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        # no die here: it would run the parent's END blocks and DESTROYs
        @ENV{keys %{ $self->{env} }} = values %{ $self->{env} };
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/gunicorn.log"
            and open STDERR, '>&', \*STDOUT
            and exec "$APP/run-gunicorn", $self->{port},
                     '--pid', "$self->{dir}/gunicorn.pid";
        print STDERR "cannot run $APP/run-gunicorn: $!\n";
        POSIX::_exit(127);
    }
    $self->{pid} = $pid;

    # gunicorn writes its pid file before it listens: wait for an answer
    my $until = time + 30;
    while (time < $until) {
        my $r = $self->fetch('/');
        return $self if $r && $r->{status} == 200;

        if ($r && $r->{status}) {
            $self->stop;
            die "gunicorn answered GET / with $r->{status}:\n"
                . $self->log_tail;
        }

        if (waitpid($pid, WNOHANG) == $pid) {
            $self->{pid} = undef;
            die "gunicorn exited at start:\n" . $self->log_tail;
        }
        sleep 0.1;
    }

    $self->stop;
    die "gunicorn did not answer on port $self->{port}:\n" . $self->log_tail;
}

# the last lines of gunicorn's log, for an error message
sub log_tail {
    my ($self) = @_;
    my @lines = split /\n/, $self->server_log;

    splice @lines, 0, -20 if @lines > 20;
    return join '', map { "$_\n" } @lines;
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;

    $self->{pid} = undef;
    kill 'TERM', $pid;

    my $until = time + 10;
    while (time < $until) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }

    kill 'KILL', $pid;
    waitpid $pid, 0;
}

# gunicorn's output: its own log, the access log and Django's log
sub server_log {
    my ($self) = @_;

    open my $fh, '<', "$self->{dir}/gunicorn.log" or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

# a plain HTTP/1.0 GET straight to gunicorn, bypassing nginx: returns
# { status, headers (lower-case name => value), body }
sub get {
    my ($self, $path, @headers) = @_;

    return $self->fetch($path, @headers)
        // die "connect to gunicorn on port $self->{port}: $!\n";
}

# the same, but undef when nothing accepts the connection
sub fetch {
    my ($self, $path, @headers) = @_;

    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp',
        Timeout => 10,
    ) or return undef;

    print $sock join "\r\n", "GET $path HTTP/1.0", 'Host: 127.0.0.1',
        @headers, '', '';

    local $/;
    my $raw = <$sock> // '';
    close $sock;

    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    my ($status_line, @lines) = split /\r\n/, $head // '';
    my ($status) = ($status_line // '') =~ m{^HTTP/\S+ (\d{3})};

    return {
        status => $status // 0,
        headers => { map { /^([^:]+):\s*(.*)$/ ? (lc $1, $2) : () } @lines },
        body => $body // '',
    };
}

# requests that reached /echo since the database was made
sub echo_count {
    my ($self) = @_;
    my $r = $self->get('/echo-count');

    die "GET /echo-count: $r->{status}\n$r->{body}" if $r->{status} != 200;
    return json($r->{body})->{count};
}

# the JSON of a response body; undef when it is not JSON (an nginx page)
sub json {
    my ($text) = @_;

    return undef unless defined $text && $text =~ /^\s*[\{\[]/;
    return eval { JSON::PP->new->utf8->decode($text) };
}

# the request headers an /echo answer shows, as "Name-Like-This" => value
# (gunicorn's HTTP_X_MTLS_IDENTITY becomes X-Mtls-Identity)
sub headers_seen {
    my ($echo) = @_;
    my %seen;

    for my $key (keys %{ $echo // {} }) {
        next unless $key =~ /^HTTP_(.+)$/;
        my $name = join '-', map { ucfirst lc } split /_/, $1;
        $seen{$name} = $echo->{$key};
    }

    return \%seen;
}

# the http{} body of the reference deployment, on one TLS port:
#   public.example.test  default server, no client certificates
#   api.example.test     optional client certificates, the module on
# Both proxy to this Django.  Options:
#   db        the libpq conninfo for mtls_identity_db
#   http      more text at http{} level
#   api       more text inside the api server (locations and directives)
#   public    more text inside the public server
#   listen    listen parameters after "ssl" (e.g. "http2")
sub deployment {
    my ($self, %o) = @_;
    my $listen = join ' ', 'ssl', $o{listen} // ();

    $o{$_} //= '' for qw(http api public);

    return <<"CONF";
    mtls_identity_db "$o{db}" timeout=5s;
    mtls_identity_strip_header X-Client-Verify;

    upstream django {
        server 127.0.0.1:$self->{port};
    }

    # the headers this configuration sets itself; a location with a
    # proxy_set_header of its own repeats them (nginx does not merge)
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Client-Verify \$ssl_client_verify;

$o{http}
    server {
        listen 127.0.0.1:%%PORT%% $listen default_server;
        server_name public.example.test;

        ssl_certificate %%FIXTURES%%/server-chain.pem;
        ssl_certificate_key %%FIXTURES%%/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
$o{public}
        location / {
            proxy_pass http://django;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%% $listen;
        server_name api.example.test;
@{[ Mtls::Nginx::tls(verify => 'optional') ]}
        mtls_identity on;
        add_header X-Mtls-Identity-Reason \$mtls_identity_reason always;
$o{api}
        location / {
            proxy_pass http://django;
        }
    }
CONF
}

# the lines every proxying location needs when it sets headers of its own
sub proxy_headers {
    return <<'CONF';
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Client-Verify $ssl_client_verify;
CONF
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    local $@;
    eval { $self->stop };
}

# An object a named sub refers to lives until global destruction, after
# File::Temp's END block has removed its directory; gunicorn is stopped
# here instead, before that (END blocks run last-defined first).
END {
    local $?;
    local $@;
    eval { $_->stop } for grep { defined } @instances;
}

1;
