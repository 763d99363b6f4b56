// Catch2's runner, with the TAP reporter that `make test` reads.

#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <catch2/catch_reporter_tap.hpp>
