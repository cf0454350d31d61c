"""goex-proxy tests: unit tests of the pure core and end-to-end tests with a real proxy."""
