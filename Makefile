# Thin wrapper over CMake: the two commands the README starts with, and their parts.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all setup build build-asan test demo clean

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

demo: build
	@bash scripts/demo.sh $(BUILD)/joule

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
