#!/usr/bin/env bash
# The long fuzz run (`make fuzz`): every target in fuzz/ for FUZZ_SECONDS
# seconds (default 300). With libFuzzer (`cargo fuzz`, coverage-guided) when
# it builds here: on nightly, or on stable through RUSTC_BOOTSTRAP=1 (the
# flags cargo fuzz passes are nightly-only). Otherwise, or with
# FUZZ_STABLE=1, the stable-toolchain driver of the test suite (random
# mutations of the seeds and of fuzz/corpus/, no coverage guidance).
# Failing inputs land in fuzz/artifacts/<target>/; move ones worth keeping
# to fuzz/corpus/<target>/<name-with-a-dash> so every `make test` replays them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-300}
targets=(pgoutput copy_rows values config)

stable() {
  echo "==> stable-toolchain driver, ${seconds}s per target" >&2
  FUZZ_SECONDS=$seconds cargo test -p pg2sink --test main -- fuzz:: --nocapture
}

if [ "${FUZZ_STABLE:-}" = 1 ] || ! command -v cargo-fuzz >/dev/null; then
  stable
  exit
fi
echo "==> building the libFuzzer targets (cargo fuzz)" >&2
if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O >/dev/null); then
  echo "libFuzzer targets do not build here; falling back" >&2
  stable
  exit
fi
for t in "${targets[@]}"; do
  echo "==> cargo fuzz run $t (${seconds}s)" >&2
  mkdir -p "fuzz/corpus/$t"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds")
done
