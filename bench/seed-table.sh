#!/bin/sh
# The seed's table: runs BenchmarkMutexCache/N, BenchmarkSyncMapCache/N and
# BenchmarkUnsyncLimit/N, prints the medians side by side with the ratio
# xs_map/limit per N and the issue's targets, writes the table (and the raw
# go-test lines) to bench/results/, and draws ns/op against N (log-log) when
# gnuplot is installed.
#
#   bench/seed-table.sh [xsync-bench binary]
#
# Environment: COUNT (passes, default 5), BENCHTIME (default 1s), FULL=1 adds
# N = 10^8 (several GB of memory), OUT (default bench/results), and
# RAW=file to format an existing run instead of running the benchmarks.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build-release/bench/xsync-bench}
count=${COUNT:-5}
benchtime=${BENCHTIME:-1s}
out=${OUT:-$here/results}
full=
[ -n "${FULL:-}" ] && full=-full
mkdir -p "$out"

if [ -n "${RAW:-}" ]; then
    raw=$RAW
else
    raw=$out/seed-table.raw.txt
    # COUNT separate passes over all three caches rather than -count:
    # a machine whose load changes during the run then skews all three
    # alike instead of whichever ran during the busy minutes.
    i=0
    : > "$raw"
    while [ "$i" -lt "$count" ]; do
        "$bin" -bench '^Benchmark(MutexCache|SyncMapCache|UnsyncLimit)/[0-9]+$' \
            -count 1 -benchtime "$benchtime" $full | tee -a "$raw"
        i=$((i + 1))
    done
fi

awk '
function median(key,    n, i, j, v, t) {
    n = cnt[key]
    if (n == 0) return -1
    for (i = 1; i <= n; i++) v[i] = val[key, i]
    for (i = 2; i <= n; i++) {            # insertion sort
        t = v[i]
        for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]
        v[j + 1] = t
    }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
/^cpu:/ { cpu = substr($0, 6) }
/^Benchmark(MutexCache|SyncMapCache|UnsyncLimit)\/[0-9]+/ {
    split($1, parts, "/")
    impl = substr(parts[1], 10)
    nproc = parts[2]; procs = 1
    if (index(nproc, "-")) { procs = substr(nproc, index(nproc, "-") + 1); nproc = substr(nproc, 1, index(nproc, "-") - 1) }
    key = impl SUBSEP nproc
    cnt[key]++
    val[key, cnt[key]] = $3
    for (i = 4; i <= NF; i++) if ($i == "allocs/op") allocs[key] = $(i - 1)
    if (!(nproc in seen)) { seen[nproc] = 1; ns[++nn] = nproc }
}
END {
    printf "The seed table: ns/op, median of %d runs each, %s thread(s)%s\n", cnt["SyncMapCache" SUBSEP ns[1]], procs, cpu ? ", cpu:" cpu : ""
    printf "targets: xs_map <= 1.25 x limit, xs_map < rwlock, 0 allocs/op for N <= 10^4\n\n"
    printf "%10s %10s %10s %10s %13s %13s %10s  %s\n", "N", "rwlock", "xs_map", "limit", "xs_map/limit", "xs_map/rwlock", "allocs/op", "targets"
    for (i = 1; i <= nn; i++)      # numeric order
        for (j = i + 1; j <= nn; j++)
            if (ns[j] + 0 < ns[i] + 0) { t = ns[i]; ns[i] = ns[j]; ns[j] = t }
    for (i = 1; i <= nn; i++) {
        n = ns[i]
        r = median("MutexCache" SUBSEP n); x = median("SyncMapCache" SUBSEP n); l = median("UnsyncLimit" SUBSEP n)
        a = allocs["SyncMapCache" SUBSEP n]
        verdict = ""
        if (x > 0 && l > 0) verdict = verdict ((x <= 1.25 * l) ? "limit ok" : "limit MISSED")
        if (x > 0 && r > 0) verdict = verdict ((x < r) ? ", rwlock ok" : ", rwlock MISSED")
        if (n + 0 <= 10000) verdict = verdict ((a + 0 == 0) ? ", allocs ok" : ", allocs MISSED")
        printf "%10s %10.1f %10.1f %10.1f %13.2f %13.2f %10s  %s\n", n, r, x, l, (l > 0 ? x / l : 0), (r > 0 ? x / r : 0), a, verdict
        printf "%s %f %f %f\n", n, r, x, l > "/dev/stderr"
    }
}' "$raw" > "$out/seed-table.txt" 2> "$out/seed-table.dat"

cat "$out/seed-table.txt"

if command -v gnuplot >/dev/null 2>&1; then
    gnuplot <<EOF
set terminal pngcairo size 900,600 noenhanced
set output "$out/seed-table.png"
set logscale xy
set xlabel "N (distinct names)"
set ylabel "ns/op"
set title "The seed's stat cache: get-or-create + add, all threads"
set key left top
set grid
plot "$out/seed-table.dat" using 1:2 with linespoints title "pthread_rwlock cache", \
     "$out/seed-table.dat" using 1:3 with linespoints title "xs_map (load_or_create)", \
     "$out/seed-table.dat" using 1:4 with linespoints title "unsynchronized private table (limit)"
EOF
    echo "plot: $out/seed-table.png"
else
    echo "(gnuplot not installed: no plot)"
fi
rm -f "$out/seed-table.dat"
