# wsgw: `make run` starts the daemon on the embedded bus; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install install-browser run test test-unit lint clean bench bench-quick bench-deps bench-burst bench-revoke soak

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]' --config-settings editable_mode=compat
	touch $@

.dev/secret:
	mkdir -p .dev
	$(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $@
	chmod 600 $@

.dev/publish-token:
	mkdir -p .dev
	$(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $@
	chmod 600 $@

run: install .dev/secret .dev/publish-token
	@echo
	@echo "wsgw on ws://127.0.0.1:5050/ws (events) and ws://127.0.0.1:5050/chat (chat), bus: $(or $(REDIS),embedded)."
	@TOKEN=$$($(VENV)/bin/wsgw-token alice --secret-file .dev/secret 2>/dev/null) && \
	  echo "A token for user alice (valid 1 h):" && echo "    $$TOKEN" && echo && \
	  echo "Live page (open it in a browser): http://127.0.0.1:5050/#token=$$TOKEN"
	@echo
	@echo "Connect and send:  {\"@type\":\"subscribe\",\"jwt\":\"<token>\"}"
	@echo "More tokens: $(VENV)/bin/wsgw-token <login> --secret-file .dev/secret"
	@echo "Publish an event alice sees:"
	@echo "    echo '{\"Target\":{\"Uuid\":\"n1\",\"Path\":\"pydiods1/personal/alice/report.pdf\",\"Type\":\"LEAF\"}}' | $(VENV)/bin/wsgw-publish --config etc/dev.ini $(if $(REDIS),--redis $(REDIS) )tree -"
	@echo "Metrics: curl http://127.0.0.1:5051/metrics"
	@echo
	$(VENV)/bin/twistd --nodaemon --pidfile= wsgw --config etc/dev.ini $(if $(REDIS),--redis $(REDIS))

# The browser test drives Debian's chromium through chromium-driver; install them when missing.
install-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "install-browser: not root and no sudo: install chromium and chromium-driver (the browser test is skipped without them)"; \
	  exit 0; fi; \
	echo "install-browser: apt-get install chromium chromium-driver"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null

test: install install-browser
	$(VENV)/bin/pytest -q -p no:randomly

# The core: never imports an adapter library (tests/test_layout.py reads this list), type-checked strictly.
CORE := wsgw/access.py wsgw/cells.py wsgw/flow.py wsgw/frames.py wsgw/pacing.py wsgw/sessions.py wsgw/gateway.py wsgw/dispatch.py \
	wsgw/interfaces.py wsgw/events wsgw/chat/__init__.py wsgw/chat/service.py wsgw/chat/actions.py \
	wsgw/chat/membership.py wsgw/chat/presence.py wsgw/chat/requests.py wsgw/chat/sanitize.py \
	wsgw/chat/model.py wsgw/chat/memory_store.py wsgw/chat/bounded.py wsgw/chat/redis_scripts.py \
	wsgw/revocations.py wsgw/reauth.py wsgw/control.py

lint: install
	$(VENV)/bin/ruff check wsgw tests
	$(VENV)/bin/mypy wsgw
	$(VENV)/bin/mypy --strict $(CORE)

# Benchmark: the gateway against bare Autobahn and Node `ws` (needs node/npm and redis-server on the PATH).
NODE_BASELINE := bench/baselines/node

$(VENV)/.bench-installed: setup.cfg | install
	$(PY) -m pip install -q -e '.[bench]' --config-settings editable_mode=compat
	touch $@

$(NODE_BASELINE)/node_modules/.installed: $(NODE_BASELINE)/package.json $(NODE_BASELINE)/package-lock.json
	cd $(NODE_BASELINE) && npm ci --no-audit --no-fund --silent
	touch $@

bench-deps: $(VENV)/.bench-installed $(NODE_BASELINE)/node_modules/.installed

bench: bench-deps
	$(PY) bench/run.py
	$(PY) bench/revoke.py

bench-quick: bench-deps
	$(PY) bench/run.py --quick

# What a prompt reader sees of a 12,000-event burst, pacing on and off (issue 11, section 2; needs redis-server).
bench-burst: install
	$(PY) bench/burst.py

# Revocation under load (issue 12): how soon revoked sessions stop getting frames, with the claims and http
# resolvers and POST /disconnect across two daemons (1,000 sessions, ~3 min; needs redis-server).
bench-revoke: $(VENV)/.bench-installed
	$(PY) bench/revoke.py

# Soak (not part of `make test`): ~5 min of thousands of sessions churning against a twistd daemon on a private
# redis-server, with bulk bursts, ping floods and half-open handshakes, then checks that nothing was lost or leaked.
# SOAK_SECONDS, SOAK_SESSIONS, SOAK_CYCLES... (see tests/soak.py).
soak: install
	$(PY) -m tests.soak

clean:
	rm -rf $(VENV) .dev build *.egg-info
