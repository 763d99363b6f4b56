package Mtls::Fixture;

# The fixture certificates of tests/fixtures and the values the openssl
# command line gave for them (NAME.expect, written by make-fixtures.sh).

use strict;
use warnings;

use Mtls::Nginx;

# every fixture with an .expect file, sorted
sub names {
    opendir my $dh, $Mtls::Nginx::FIXTURES or die $!;
    my @names = sort map { /^(.+)\.expect$/ ? $1 : () } readdir $dh;
    closedir $dh;
    return @names;
}

# field => [values, in file order]
sub expect {
    my ($name) = @_;
    my %want;

    open my $fh, '<:raw', "$Mtls::Nginx::FIXTURES/$name.expect" or die $!;
    while (my $line = <$fh>) {
        chomp $line;
        my ($field, $value) = split /=/, $line, 2;
        push @{ $want{$field} }, $value if defined $value;
    }
    close $fh;

    return \%want;
}

# the canonical fingerprint of any fixture certificate, from openssl
sub fingerprint {
    my ($name) = @_;
    my $file = "$Mtls::Nginx::FIXTURES/$name.crt";

    my $out = `openssl x509 -in '$file' -outform DER | openssl dgst -sha256 -r`;
    die "cannot read $file\n" if $? != 0;
    return (split ' ', $out)[0];
}

# several values as one variable: comma-separated, with "\" before a
# comma or backslash inside a value
sub joined {
    my (@values) = @_;

    return join ',', map { (my $v = $_) =~ s/([\\,])/\\$1/g; $v } @values;
}

1;
