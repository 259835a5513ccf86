# hipserve: the two commands of the README's Quick start.
#   make run   - install system packages, fetch the default model, build, generate text
#   make test  - install system packages, fetch the model (for the real-model tests), build, run all tests,
#                then build again with AddressSanitizer + UndefinedBehaviorSanitizer and run them again
SHELL := /bin/bash
BUILD ?= build
BUILD_ASAN ?= build-asan
JOBS ?= $(shell nproc)
PROMPT ?= What is the capital of France? Answer in one sentence.
APT_PACKAGES := build-essential cmake pkg-config git python3 python3-pip \
                libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libpcre2-dev \
                libcpp-httplib-dev python3-venv

.PHONY: all deps cudnn-headers model build run test test-fast test-asan bench fuzz clean format

all: build

# Installs only what is missing (needs root, as on the CI machine).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

model:
	scripts/fetch_model.sh

# cuDNN's headers for the CUDA build's fused-attention path (only where nvcc is installed; without them the
# CUDA build still works, with its own dense prefill kernel only).
cudnn-headers:
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
	  scripts/fetch_cudnn_headers.sh || echo "warning: cuDNN headers not fetched; the CUDA build runs without cuDNN attention"; \
	fi

$(BUILD)/build.ninja $(BUILD)/Makefile: | cudnn-headers
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j$(JOBS)

run: deps model build
	./$(BUILD)/hipserve run --chat -p "$(PROMPT)" -n 64 --temp 0

# Tests that need the model skip (with a message) when it could not be fetched.
test: deps build
	@scripts/fetch_model.sh || echo "warning: the model could not be fetched; tests that need it will be skipped"
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)
	$(MAKE) test-asan

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

test-asan: deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHIPSERVE_SANITIZE=ON
	cmake --build $(BUILD_ASAN) -j$(JOBS) --target hipserve_tests hipserve
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j$(JOBS)

bench: build model
	./$(BUILD)/hipserve bench -p 512,4096 -n 128 -r 3

fuzz:
	CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -DHIPSERVE_FUZZ=ON -DHIPSERVE_TESTS=OFF
	cmake --build build-fuzz -j$(JOBS) --target gguf_fuzz
	./build-fuzz/gguf_fuzz -max_total_time=60 fuzz/corpus

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) build-fuzz
