"""Measurement: error rates (``metrics``), scoring a bundle on a manifest (``evaluation``) and speed/memory
benchmarks (``bench``). Imported by the CLI and the benchmarks; the runtime never imports it."""
