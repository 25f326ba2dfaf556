"""The XLA:CPU flags the test suite compiles with (tests/conftest.py sets them; the benchmark
benchmarks/compile_flags.py measures them against XLA's defaults). One definition, no imports."""

# LLVM at -O1 and XLA's older (non-MLIR) fusion emitters: the suite's tiny programs compile
# several times faster, and train no slower (docs/performance.md, "The test suite's time").
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
