# wsgw: `make run` starts the daemon on the embedded bus; `make test` runs the tests.
VENV ?= .venv
# `make run PORT=5060 ADMIN_PORT=5061` when 5050 or 5051 is taken (the public and the operator listener).
PORT ?= 5050
ADMIN_PORT ?= 5051
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install install-browser run test test-unit lint clean bench bench-quick bench-deps bench-burst bench-revoke soak

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"  # the plugin cache (README: systemd)
	touch $@

.dev/secret:
	mkdir -p .dev
	$(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $@
	chmod 600 $@

.dev/publish-token:
	mkdir -p .dev
	$(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $@
	chmod 600 $@

RUN_ADMIN = tcp:$(ADMIN_PORT):interface=127.0.0.1

run: install .dev/secret .dev/publish-token
	@$(PY) scripts/ports-free.py 127.0.0.1:$(PORT) ::1:$(PORT) 127.0.0.1:$(ADMIN_PORT)
	@echo
	@echo "wsgw on ws://127.0.0.1:$(PORT)/ws (events) and ws://127.0.0.1:$(PORT)/chat (chat), bus: $(or $(REDIS),embedded)."
	@TOKEN=$$($(VENV)/bin/wsgw-token alice --secret-file .dev/secret 2>/dev/null) && \
	  echo "A token for user alice (valid 1 h):" && echo "    $$TOKEN" && echo && \
	  echo "Live page (open it in a browser): http://127.0.0.1:$(PORT)/#token=$$TOKEN"
	@echo
	@echo "Connect and send:  {\"@type\":\"subscribe\",\"jwt\":\"<token>\"}"
	@echo "More tokens: $(VENV)/bin/wsgw-token <login> --secret-file .dev/secret"
	@echo "Publish an event alice sees:"
	@echo "    echo '{\"Target\":{\"Uuid\":\"n1\",\"Path\":\"pydiods1/personal/alice/report.pdf\",\"Type\":\"LEAF\"}}' | $(VENV)/bin/wsgw-publish --config etc/dev.ini $(if $(REDIS),--redis $(REDIS),--admin-listen $(RUN_ADMIN)) tree -"
	@echo "Metrics: curl http://127.0.0.1:$(ADMIN_PORT)/metrics"
	@echo "Operator page: http://127.0.0.1:$(ADMIN_PORT)/ (its token: cat .dev/publish-token)"
	@echo
	@$(VENV)/bin/twistd --nodaemon --pidfile= wsgw --config etc/dev.ini $(if $(REDIS),--redis $(REDIS)) \
	  --listen tcp:$(PORT):interface=127.0.0.1 --listen 'tcp6:$(PORT):interface=\:\:1' --admin-listen $(RUN_ADMIN) \
	  || { echo "make run: the daemon stopped (a port in use? choose others: make run PORT=... ADMIN_PORT=...)"; exit 1; }

# The browser test drives Debian's chromium through chromium-driver; install them when missing (with apt-get, as
# root or through sudo). Fails, saying what to install, when it cannot; the browser test is then skipped.
install-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "install-browser: no apt-get: install chromium and chromedriver with your package manager"; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "install-browser: not root and no sudo: install chromium and chromium-driver (apt)"; exit 1; fi; \
	echo "install-browser: apt-get install chromium chromium-driver"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null

# The suite checks its own preconditions (tests/conftest.py): a Redis (WSGW_TEST_REDIS, else a private
# redis-server from the PATH) or one line saying what is missing. Without chromium the browser test is skipped.
test: install
	@$(MAKE) --no-print-directory install-browser || echo "make test: no chromium: the browser test will be skipped"
	$(VENV)/bin/pytest -q -p no:randomly

# The tests that need neither Redis nor the network (marked `unit`, tests/conftest.py UNIT_MODULES).
test-unit: install
	$(VENV)/bin/pytest -q -p no:randomly -m unit

# The core: never imports an adapter library (tests/test_layout.py reads this list), type-checked strictly.
CORE := wsgw/access.py wsgw/cells.py wsgw/flow.py wsgw/frames.py wsgw/pacing.py wsgw/sessions.py wsgw/gateway.py wsgw/dispatch.py \
	wsgw/interfaces.py wsgw/events wsgw/chat/__init__.py wsgw/chat/service.py wsgw/chat/actions.py \
	wsgw/chat/membership.py wsgw/chat/presence.py wsgw/chat/requests.py wsgw/chat/sanitize.py \
	wsgw/chat/model.py wsgw/chat/memory_store.py wsgw/chat/bounded.py wsgw/chat/redis_scripts.py \
	wsgw/revocations.py wsgw/reauth.py wsgw/control.py wsgw/instances.py wsgw/web/upgrade.py

lint: install
	$(VENV)/bin/ruff check wsgw tests
	$(VENV)/bin/mypy wsgw
	$(VENV)/bin/mypy --strict $(CORE)

# Benchmark: the gateway against bare Autobahn, Node `ws` and Go gorilla/websocket (needs node/npm and redis-server
# on the PATH; the Go baseline is built from Debian's packages, see below).
NODE_BASELINE := bench/baselines/node

$(VENV)/.bench-installed: setup.cfg | install
	$(PY) -m pip install -q -e '.[bench]' --config-settings editable_mode=compat
	touch $@

$(NODE_BASELINE)/node_modules/.installed: $(NODE_BASELINE)/package.json $(NODE_BASELINE)/package-lock.json
	cd $(NODE_BASELINE) && npm ci --no-audit --no-fund --silent
	touch $@

# The Go baseline (gorilla/websocket shaped like melody, redigo, golang-jwt), built offline in GOPATH mode from
# Debian's packages, installed here when missing (as root, with apt-get); without them the build is skipped and
# bench/run.py leaves the Go column out, saying so.
GO_BASELINE := bench/baselines/go
GO_DEBS := golang-go golang-github-gorilla-websocket-dev golang-github-gomodule-redigo-dev golang-github-golang-jwt-jwt-dev

$(GO_BASELINE)/wsgw-bench-go: $(GO_BASELINE)/main.go
	@missing=$$(for p in $(GO_DEBS); do dpkg-query -W -f '$${Status}' $$p 2>/dev/null | grep -q 'ok installed' \
	  || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "bench-deps: apt-get install $$missing"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	fi; \
	if command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/gorilla/websocket ] \
	  && [ -d /usr/share/gocode/src/github.com/gomodule/redigo ] && [ -d /usr/share/gocode/src/github.com/golang-jwt/jwt ]; \
	then \
	  cd $(GO_BASELINE) && GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOFLAGS= \
	    GOCACHE=$(CURDIR)/build/gocache go build -o wsgw-bench-go main.go; \
	else \
	  echo "bench-deps: the Go baseline is not built (it needs Debian's $(GO_DEBS)): the bench leaves it out"; \
	fi

bench-deps: $(VENV)/.bench-installed $(NODE_BASELINE)/node_modules/.installed $(GO_BASELINE)/wsgw-bench-go

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
