package Mtls::Dump;

# An upstream that answers every request with the exact head it received
# (request line and every header line, in order, duplicates included), so
# a test sees what the application's HTTP parser would see.  With
# `delay`, it pauses that many seconds before answering, so a client's
# next request on the same connection comes later.
#
#   my $dump = Mtls::Dump->new;              # or ->new(delay => 2)
#   ... proxy_pass http://127.0.0.1:$dump->{port}; ...
#   my @values = Mtls::Dump::values($body, 'X-Mtls-Identity');

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Time::HiRes ();

sub new {
    my ($class, %o) = @_;
    my $delay = $o{delay} // 0;

    my $listen = IO::Socket::INET->new(
        Listen => 16, LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', ReuseAddr => 1) or die "listen: $!";

    my $pid = fork // die "fork: $!";

    # the children leave with _exit: a plain exit would run the test's
    # destructors and stop its nginx and PostgreSQL
    if ($pid == 0) {
        $SIG{TERM} = sub { POSIX::_exit(0) };

        while (my $client = $listen->accept) {
            next if fork;

            my $head = '';
            while (defined(my $line = <$client>)) {
                last if $line =~ /^\r?\n$/;
                $head .= $line;
            }

            Time::HiRes::sleep($delay) if $delay;
            print $client "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        . "Content-Length: " . length($head) . "\r\n\r\n"
                        . $head;
            close $client;
            POSIX::_exit(0);
        }

        POSIX::_exit(0);
    }

    my $port = $listen->sockport;
    close $listen;

    return bless { pid => $pid, port => $port }, $class;
}

sub port { $_[0]{port} }

# the values of every header called NAME (case-insensitive), spaces
# around each value trimmed as an HTTP parser trims them
sub values {
    my ($head, $name) = @_;

    return map { /^\Q$name\E:[ \t]*(.*?)[ \t]*\r?$/i ? $1 : () }
        split /\n/, $head // '';
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
}

1;
