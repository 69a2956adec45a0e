#!/usr/bin/env bash
# The fuzz targets of fuzz/fuzz_targets (fuzz/README.md), with cargo fuzz on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets it pass libFuzzer's -Z flags) and debug assertions on, so that integer overflows
# are crashes too.
#
#   fuzz/run.sh check                 build, then run each target for a few seconds on its committed corpus
#                                     (what scripts/test.sh runs: the targets compile, the corpora pass)
#   fuzz/run.sh long [SECONDS] [T…]   fuzz each target (all by default) for SECONDS (600), one after another,
#                                     under nice; logs and a summary line per target in fuzz/logs/
#   fuzz/run.sh cmin [T…]             minimise the committed corpora
#
# Environment: CARGO_FUZZ (the cargo-fuzz binary; default: the one scripts/provision.sh installs, else PATH),
# FUZZ_SANITIZER (the long runs' sanitizer: address, or none), FUZZ_CHECK_SECONDS (check mode's seconds per
# target, default 5), FUZZ_TARGET_DIR (a build folder other than fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"

cache_dir="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
cargo_fuzz="${CARGO_FUZZ:-$cache_dir/cargo-fuzz-0.13.2/bin/cargo-fuzz}"
[ -x "$cargo_fuzz" ] || cargo_fuzz="$(command -v cargo-fuzz)"
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

log() { printf '[fuzz] %s\n' "$*" >&2; }

targets() { "$cargo_fuzz" list; }

target_dir=()
[ -z "${FUZZ_TARGET_DIR:-}" ] || target_dir=(--target-dir "$FUZZ_TARGET_DIR")

# The long runs: optimised (-O), with debug assertions (-a) and the sanitizer. Check mode only has to show
# that the targets build and pass their corpora: an unoptimised build without the sanitizer (debug
# assertions are on there anyway) takes a fraction of the time, most of it the dependencies'.
fuzz() { "$cargo_fuzz" "$1" -O -a --sanitizer "$sanitizer" "${target_dir[@]}" "${@:2}"; }
check() { "$cargo_fuzz" "$1" --dev -a --sanitizer none "${target_dir[@]}" "${@:2}"; }

mode="${1:-check}"
shift || true
case "$mode" in
  check)
    seconds="${FUZZ_CHECK_SECONDS:-5}"
    check build
    failed=()
    for target in $(targets); do
      # New inputs go to a scratch folder (the first one), so the committed corpus stays as it is.
      scratch="$(mktemp -d)"
      # A target whose corpus is not committed yet still runs, from nothing.
      mkdir -p "corpus/$target"
      if check run "$target" "$scratch" "corpus/$target" -- -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 >"$scratch.log" 2>&1; then
        log "$target: $(grep -E '^Done [0-9]+ runs' "$scratch.log" | tail -n 1)"
      else
        log "$target: FAILED"
        tail -n 40 "$scratch.log" >&2
        failed+=("$target")
      fi
      rm -rf "$scratch" "$scratch.log"
    done
    if [ ${#failed[@]} -gt 0 ]; then
      log "crashes in: ${failed[*]} (reproduce: fuzz/README.md)"
      exit 1
    fi
    ;;
  long)
    seconds="${1:-600}"
    shift || true
    [ $# -gt 0 ] || set -- $(targets)
    mkdir -p logs
    fuzz build
    for target in "$@"; do
      log "$target: fuzzing for $seconds s"
      # One process at a time (the machine has two cores and other builds): libFuzzer in-process, without
      # -jobs or -fork, which would start workers beside it. Corpus sizes before and after.
      before="$(ls "corpus/$target" | wc -l) files, $(du -sb "corpus/$target" | cut -f1) bytes"
      status=0
      nice -n 10 "$cargo_fuzz" run -O -a --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"logs/$target.log" 2>&1 || status=$?
      after="$(ls "corpus/$target" | wc -l) files, $(du -sb "corpus/$target" | cut -f1) bytes"
      runs="$(grep -E '^stat::number_of_executed_units' "logs/$target.log" | awk '{print $2}')"
      elapsed="$(grep -E '^#[0-9]+' "logs/$target.log" | tail -n 1)"
      echo "$target exit=$status runs=${runs:-?} corpus_before=[$before] corpus_after=[$after] last=[$elapsed]" \
        | tee -a logs/summary.txt
    done
    ;;
  cmin)
    [ $# -gt 0 ] || set -- $(targets)
    for target in "$@"; do
      before="$(ls "corpus/$target" | wc -l)"
      fuzz cmin "$target" "corpus/$target" -- -timeout=10 -rss_limit_mb=2048 >/dev/null 2>&1
      log "$target: $before files → $(ls "corpus/$target" | wc -l), $(du -sb "corpus/$target" | cut -f1) bytes"
    done
    ;;
  *)
    echo "usage: fuzz/run.sh check | long [SECONDS] [TARGET…] | cmin [TARGET…]" >&2
    exit 2
    ;;
esac
