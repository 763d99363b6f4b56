package Mtls::Client;

# Real HTTPS requests with curl, presenting fixture client certificates.
#
#   my $r = Mtls::Client::get(port => $port, path => '/vars',
#                              cert => 'alpha');
#   $r->{status}, $r->{body}, $r->{headers}{'content-type'}[0]
#
# Options:
#   port      the server's port (required)
#   host      the name used for SNI, Host and certificate checks
#             (default api.example.test; it resolves to 127.0.0.1)
#   path      default /
#   cert      a fixture name (tests/fixtures/NAME.crt with NAME.key) or
#             a path to a PEM certificate; key defaults to the same name
#   key       a fixture name or path
#   headers   a list of "Name: value" lines to send
#   http2     true for HTTP/2 (default HTTP/1.1)
#   urls      several paths fetched by one curl process, each on a new
#             connection that resumes the TLS session of the first
#
# Returns a hash: status (0 when no HTTP answer came), headers (lower-case
# name => list of values), body, error (what curl printed on stderr),
# seconds (how long it took).
#
#   my $h = Mtls::Client::spawn(port => $port, cert => 'alpha');
#   ... while it waits ...
#   my $r = Mtls::Client::collect($h);

use strict;
use warnings;

use File::Temp qw(tempdir);
use Time::HiRes qw(time);

use Mtls::Nginx;

my $tmp = tempdir('mtls-client-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $seq = 0;

sub fixture_file {
    my ($name, $ext) = @_;

    return $name if $name =~ m{/};
    return "$Mtls::Nginx::FIXTURES/$name.$ext";
}

sub base_command {
    my (%o) = @_;
    my $host = $o{host} // 'api.example.test';

    my @cmd = ('curl', '-sS', '--max-time', $o{timeout} // 10,
               '--cacert', "$Mtls::Nginx::FIXTURES/root-a.crt",
               '--resolve', "$host:$o{port}:127.0.0.1",
               $o{http2} ? '--http2' : '--http1.1');

    if (defined $o{cert}) {
        push @cmd, '--cert', fixture_file($o{cert}, 'crt'),
                   '--key', fixture_file($o{key} // $o{cert}, 'key');
    }

    push @cmd, map { ('-H', $_) } @{ $o{headers} // [] };
    push @cmd, @{ $o{curl} // [] };

    return ($host, @cmd);
}

sub get {
    my (%o) = @_;

    return (requests(%o, urls => [$o{path} // '/']))[0];
}

# several requests by one curl: returns one result hash per path
sub requests {
    my (%o) = @_;
    my ($host, @cmd) = base_command(%o);
    my @paths = @{ $o{urls} };
    my @files;

    for my $path (@paths) {
        my $n = $seq++;
        push @files, ["$tmp/body.$n", "$tmp/head.$n"];
        push @cmd, '-o', "$tmp/body.$n", '-D', "$tmp/head.$n",
                   "https://$host:$o{port}$path";
        push @cmd, '--next', base_command_tail(%o)
            unless $path eq $paths[-1];
    }

    my $err = "$tmp/err.$seq";
    my $started = time;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null' or die $!;
        open STDERR, '>', $err or die $!;
        exec { $cmd[0] } @cmd or die "exec curl: $!";
    }

    my $job = { pid => $pid, files => \@files, err => $err,
                started => $started };

    return $o{spawn} ? $job : collect($job);
}

# a request under way in its own process
sub spawn {
    my (%o) = @_;

    return requests(%o, urls => [$o{path} // '/'], spawn => 1);
}

# waits for a spawned request; returns its result (or results)
sub collect {
    my ($job) = @_;

    waitpid $job->{pid}, 0;

    my $seconds = time - $job->{started};
    my $error = slurp($job->{err});
    my @results = map { parse($_->[1], $_->[0], $error) } @{ $job->{files} };

    $_->{seconds} = $seconds for @results;
    return wantarray ? @results : $results[0];
}

# what --next must repeat for the following URL
sub base_command_tail {
    my (%o) = @_;
    my (undef, undef, @rest) = base_command(%o);

    return @rest;
}

sub slurp {
    my ($file) = @_;

    open my $fh, '<', $file or return '';
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text // '';
}

sub parse {
    my ($head_file, $body_file, $error) = @_;
    my %r = (status => 0, headers => {}, body => slurp($body_file),
             error => $error);

    # the last response in the file (after any 100 Continue)
    my @blocks = split /\r?\n\r?\n/, slurp($head_file);
    my $head = $blocks[-1] // '';
    my ($status_line, @lines) = split /\r?\n/, $head;

    if (defined $status_line && $status_line =~ m{^HTTP/\S+ (\d{3})}) {
        $r{status} = $1;
    }

    for my $line (@lines) {
        my ($name, $value) = $line =~ /^([^:]+):\s*(.*)$/ or next;
        push @{ $r{headers}{lc $name} }, $value;
    }

    return \%r;
}

1;
