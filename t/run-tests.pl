#!/usr/bin/perl
#
# run-tests.pl UNIT-BINARY TEST-FILE...
#
# Runs the Catch2 unit tests (through their TAP reporter) and the Perl
# tests under one TAP harness, then prints, as its last line, the total
# over both suites: "N passed, N failed".  A test file that dies, or
# exits non-zero, without a failed test counts as one failure.
# Exits non-zero when anything failed.

use strict;
use warnings;

use FindBin;
use TAP::Harness;

my ($unit, @files) = @ARGV;
die "usage: $0 UNIT-BINARY TEST-FILE...\n" unless defined $unit;

my $harness = TAP::Harness->new({
    lib => ["$FindBin::Bin/lib"],
    color => 0,
    verbosity => $ENV{TEST_VERBOSE} ? 1 : 0,
    exec => sub {
        my (undef, $file) = @_;
        return $file eq $unit ? [$unit, '--reporter', 'tap'] : undef;
    },
});

my $aggregate = $harness->runtests($unit, @files);

my $passed = scalar $aggregate->passed;
my $failed = 0;

for my $name ($aggregate->descriptions) {
    my ($parser) = $aggregate->parsers($name);
    my $bad = scalar $parser->failed;

    $bad = 1 if $bad == 0 && ($parser->has_problems || !$parser->is_good_plan);
    $failed += $bad;
}

print "$passed passed, $failed failed\n";
exit($failed ? 1 : 0);
