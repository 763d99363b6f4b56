package Mtls::Slow;

# An upstream that takes its time: it answers every request after a
# pause, so a client's next request on the same connection comes later.
#
#   my $slow = Mtls::Slow->new(seconds => 2);
#   ... proxy_pass http://127.0.0.1:$slow->{port}; ...

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep);

sub new {
    my ($class, %o) = @_;
    my $seconds = $o{seconds} // 2;

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

            sleep $seconds;
            print $client "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nslow\n";
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

sub DESTROY {
    my ($self) = @_;

    local $?;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
}

1;
