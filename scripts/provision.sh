#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need on a fresh Debian machine. Idempotent:
# each step checks first and does nothing when its piece is already there.
#
#   - Debian packages: PostgreSQL 15 server (private test clusters), cmake + libcurl (rdkafka's cmake-build),
#     openssl (tests/tls.rs makes its certificates with it), sqlite3 (the test harness adds an index tansu's
#     storage lacks)
#   - the rustfmt and clippy components of the Rust toolchain (scripts/test.sh checks formatting and lints)
#   - tansu 0.6.0, a Kafka-protocol broker, built once into a cache outside the repository
#   - cargo-fuzz 0.13.2, for the fuzz targets in fuzz/ (fuzz/run.sh), installed into the same cache
#   - a Python venv with Confluent's client and Avro deserializer (tests/python/requirements.txt)
#
# Environment: SLUICE_CACHE_DIR (default ~/.cache/sluice) is where tansu, cargo-fuzz and the venv are installed.
set -euo pipefail

cache_dir="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
tansu_version="0.6.0"
tansu_root="$cache_dir/tansu-$tansu_version"
cargo_fuzz_version="0.13.2"
cargo_fuzz_root="$cache_dir/cargo-fuzz-$cargo_fuzz_version"

log() { printf '[provision] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_debs=()
command -v cmake >/dev/null 2>&1 || need_debs+=(cmake)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need_debs+=(libcurl4-openssl-dev)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_debs+=(postgresql-15 postgresql-client-15)
command -v pg_recvlogical >/dev/null 2>&1 || need_debs+=(postgresql-client-15)
command -v openssl >/dev/null 2>&1 || need_debs+=(openssl)
command -v sqlite3 >/dev/null 2>&1 || need_debs+=(sqlite3)
# librdkafka's cmake build wants a C++ compiler and these headers for zstd/lz4 compression and TLS.
command -v g++ >/dev/null 2>&1 || need_debs+=(g++)
dpkg -s libssl-dev >/dev/null 2>&1 || need_debs+=(libssl-dev)
dpkg -s libsasl2-dev >/dev/null 2>&1 || need_debs+=(libsasl2-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_debs+=(zlib1g-dev)
dpkg -s libzstd-dev >/dev/null 2>&1 || need_debs+=(libzstd-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need_debs+=(pkg-config)

if [ ${#need_debs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
else
  log "Debian packages present"
fi

# rustfmt and clippy, which scripts/test.sh runs before the tests; a minimal rustup profile lacks them.
# (Without rustup, the toolchain's packager decides; cargo fmt / cargo clippy then say what is missing.)
need_components=()
if command -v rustup >/dev/null 2>&1; then
  installed_components="$(rustup component list --installed 2>/dev/null || true)"
  for component in rustfmt clippy; do
    grep -q "^$component-" <<<"$installed_components" || need_components+=("$component")
  done
fi
if [ ${#need_components[@]} -gt 0 ]; then
  log "adding Rust components: ${need_components[*]}"
  rustup component add "${need_components[@]}" >&2
else
  log "Rust components present"
fi

if [ -x "$tansu_root/bin/tansu" ]; then
  log "tansu $tansu_version present at $tansu_root/bin/tansu"
else
  log "building tansu $tansu_version into $tansu_root (about 12 minutes on 2 cores, once per machine)"
  mkdir -p "$cache_dir"
  # A private target dir keeps the build out of the repository and out of other cargo builds.
  CARGO_TARGET_DIR="$cache_dir/tansu-build" cargo install "tansu@$tansu_version" --locked \
    --no-default-features --features libsql --root "$tansu_root.partial"
  rm -rf "$tansu_root" && mv "$tansu_root.partial" "$tansu_root"
  rm -rf "$cache_dir/tansu-build"
fi

# cargo-fuzz drives the fuzz targets (fuzz/run.sh, which scripts/test.sh runs briefly). The stable toolchain
# serves: fuzz/run.sh sets RUSTC_BOOTSTRAP=1 for libFuzzer's -Z flags. About 2 minutes, once per machine.
if [ -x "$cargo_fuzz_root/bin/cargo-fuzz" ]; then
  log "cargo-fuzz $cargo_fuzz_version present at $cargo_fuzz_root/bin/cargo-fuzz"
else
  log "building cargo-fuzz $cargo_fuzz_version into $cargo_fuzz_root"
  mkdir -p "$cache_dir"
  CARGO_TARGET_DIR="$cache_dir/cargo-fuzz-build" cargo install "cargo-fuzz@$cargo_fuzz_version" --locked \
    --root "$cargo_fuzz_root.partial"
  rm -rf "$cargo_fuzz_root" && mv "$cargo_fuzz_root.partial" "$cargo_fuzz_root"
  rm -rf "$cache_dir/cargo-fuzz-build"
fi

# Python with Confluent's client and Avro deserializer, for the tests that read sluice's topics the way a
# Python consumer does (tests/python). A private venv, rebuilt when tests/python/requirements.txt changes.
python_root="$cache_dir/python"
requirements="$(dirname "$0")/../tests/python/requirements.txt"
if cmp -s "$requirements" "$python_root/requirements.txt"; then
  log "Python test packages present at $python_root"
else
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing Debian packages: python3 python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  log "installing the Python test packages into $python_root"
  rm -rf "$python_root.partial"
  python3 -m venv "$python_root.partial"
  "$python_root.partial/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$python_root.partial/requirements.txt"
  rm -rf "$python_root" && mv "$python_root.partial" "$python_root"
fi

echo "$tansu_root/bin/tansu"
