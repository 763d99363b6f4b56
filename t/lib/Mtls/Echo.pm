package Mtls::Echo;

# A plain nginx, without the module, standing in for the application: it
# answers every request with the identity headers it received, one
# "name=value" line each, and counts requests in its access log.
#
#   my $echo = Mtls::Echo->new;
#   ... proxy_pass http://127.0.0.1:$echo->{port}; ...
#   my $seen = Mtls::Echo::parse($response_body);   # name => value
#   $echo->count;                                    # requests so far

use strict;
use warnings;

use Mtls::Nginx;

our @HEADERS = qw(x-mtls-identity x-mtls-identity-groups x-mtls-identity-key
                  x-mtls-identity-fingerprint x-client-verify);

sub new {
    my ($class) = @_;

    my $body = join '', map {
        (my $var = $_) =~ tr/-/_/;
        "$_=\$http_$var\\n";
    } @HEADERS;

    my $nginx = Mtls::Nginx->new(load_module => 0, http => <<"CONF");
    server {
        listen 127.0.0.1:%%PORT%%;

        location / {
            return 200 "$body";
        }
    }
CONF
    $nginx->start;

    return bless { nginx => $nginx, port => $nginx->port }, $class;
}

sub port { $_[0]{port} }

# requests the echo has answered
sub count {
    my ($self) = @_;
    my @lines = split /\n/, $self->{nginx}->access_log;

    return scalar @lines;
}

sub parse {
    my ($body) = @_;
    my %seen;

    for my $line (split /\n/, $body // '') {
        my ($name, $value) = split /=/, $line, 2;
        $seen{$name} = $value if defined $value;
    }

    return \%seen;
}

sub stop { $_[0]{nginx}->stop }

1;
