# The rlhfjob operator (python -m rlhfjob_operator): kopf and the Kubernetes client,
# no torch. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/rlhfjob/operator:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /opt/rlhfjob
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/

# The package without its dependencies (torch is one), then the operator extra and
# the base dependencies it imports, read from pyproject.toml so that they cannot
# drift; the last line fails the build if importing the operator pulls in torch.
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import subprocess, sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
skip = ('torch', 'numpy', 'tqdm'); \
deps = [d for d in p['dependencies'] if not d.startswith(skip)]; \
deps += p['optional-dependencies']['operator']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', *deps])" \
    && python -c "import sys, rlhfjob_operator.__main__; sys.exit('torch' in sys.modules)" \
    && groupadd --gid 1000 rlhfjob \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin rlhfjob

# Numeric, so that the kubelet can check runAsNonRoot.
USER 1000:1000

EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "rlhfjob_operator"]
CMD ["--standalone", "--all-namespaces"]
