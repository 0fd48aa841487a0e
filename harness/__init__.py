"""What the tests and the benchmarks share, and the product does not ship: starting real Conclave services (and
llama.cpp's server) as separate processes on free localhost ports."""
