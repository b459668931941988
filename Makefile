.PHONY: demo test build clean-test

# Boots a throwaway Postgres, streams changes to files, prints them.
demo:
	scripts/demo.sh

# The whole test suite (installs and starts what it needs).
test:
	scripts/test.sh

build:
	cargo build --release

# Stops the Postgres servers the test harness left running.
clean-test:
	scripts/stop-test-postgres.sh
