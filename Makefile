# wsgw: `make run` starts the daemon on the embedded bus; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install run test test-unit lint clean

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

run: install .dev/secret
	@echo
	@echo "wsgw on ws://127.0.0.1:5050/ws (events) and ws://127.0.0.1:5050/chat (chat), bus: $(or $(REDIS),embedded)."
	@echo "A token for user alice (valid 1 h):"
	@$(VENV)/bin/wsgw-token alice --secret-file .dev/secret 2>/dev/null | sed 's/^/    /'
	@echo "Connect and send:  {\"@type\":\"subscribe\",\"jwt\":\"<token>\"}"
	@echo "More tokens: $(VENV)/bin/wsgw-token <login> --secret-file .dev/secret"
	@echo
	$(VENV)/bin/twistd --nodaemon --pidfile= wsgw --config etc/dev.ini $(if $(REDIS),--redis $(REDIS))

test: install
	$(VENV)/bin/pytest -q -p no:randomly

lint: install
	$(VENV)/bin/ruff check wsgw tests
	$(VENV)/bin/mypy wsgw

clean:
	rm -rf $(VENV) .dev build *.egg-info
