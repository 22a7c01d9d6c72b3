# Thin wrapper over CMake: the README's commands.
#   make test    configure, build, run every test program (ctest)
#   make bench   Release build, run the benchmark set, then the seed's table
#                (bench/seed-table.sh: writes bench/results/seed-table.txt,
#                and .png with gnuplot; knobs COUNT, BENCHTIME, FULL=1)
#   make check   normal, ASan+UBSan, TSan and portable builds, each with its tests
# CC selects the compiler (CC=clang make test); JOBS the build parallelism.

CC ?= cc
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BENCH_ARGS ?= -benchtime 1s -count 1
# The seed-table rows run in the table below, not in the plain set.
SEED_ROWS = ^Benchmark(MutexCache|SyncMapCache|SyncMapCacheOneWord|UnsyncLimit)/
COUNT ?= 5
BENCHTIME ?= 1s
export COUNT BENCHTIME FULL
BUILD ?= build
CMAKE ?= cmake
CTEST ?= ctest

define build_and_test
	$(CMAKE) -S . -B $(1) -DCMAKE_C_COMPILER=$(CC) $(2) >/dev/null
	$(CMAKE) --build $(1) -j $(JOBS)
	cd $(1) && $(CTEST) --output-on-failure -j 1
endef

.PHONY: all build test bench check check-normal check-asan check-tsan check-portable clean

all: build

build:
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_C_COMPILER=$(CC) >/dev/null
	$(CMAKE) --build $(BUILD) -j $(JOBS)

test:
	$(call build_and_test,$(BUILD),)

bench:
	$(CMAKE) -S . -B build-release -DCMAKE_C_COMPILER=$(CC) -DCMAKE_BUILD_TYPE=Release -DXS_BUILD_TESTS=OFF >/dev/null
	$(CMAKE) --build build-release -j $(JOBS) --target xsync-bench
	./build-release/bench/xsync-bench $(BENCH_ARGS) -skip '$(SEED_ROWS)'
	sh bench/seed-table.sh ./build-release/bench/xsync-bench

check: check-normal check-asan check-tsan check-portable

check-normal:
	$(call build_and_test,build-check/normal,)

check-asan:
	$(call build_and_test,build-check/asan,-DXS_SANITIZE=address -DXS_BUILD_BENCH=OFF)

check-tsan:
	$(call build_and_test,build-check/tsan,-DXS_SANITIZE=thread -DXS_BUILD_BENCH=OFF)

check-portable:
	$(call build_and_test,build-check/portable,-DXS_PORTABLE=ON -DXS_BUILD_BENCH=OFF)

clean:
	rm -rf $(BUILD) build-release build-check
