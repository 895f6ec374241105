# Thin wrapper over CMake: the two commands the README starts with, and their parts.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)
# seconds per fuzz target for `make fuzz` (make test runs each for a few seconds)
FUZZ_SECONDS ?= 300

.PHONY: all setup build build-asan test fuzz demo clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan: setup
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DJOULE_SANITIZE=ON > /dev/null
	cmake --build $(BUILD_ASAN) -j $(JOBS)

test: build build-asan
	cd $(BUILD) && ctest --output-on-failure
	cd $(BUILD_ASAN) && ctest --output-on-failure
	@bash scripts/fuzz.sh --smoke

# every libFuzzer harness of tests/fuzz for FUZZ_SECONDS, nice'd (scripts/fuzz.sh)
fuzz: build
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

demo: build
	@bash scripts/demo.sh $(BUILD)/joule

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) build-fuzz
