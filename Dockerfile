# perfkit in a container: the load generator (master or worker) and the bundled service.
#   docker build -t perfkit .
#   docker run --rm perfkit --version
FROM python:3.11-slim
WORKDIR /opt/perfkit
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY toolkit toolkit
COPY scenarios scenarios
# The versions the tests pass with; a locustfile's own dependencies can be added in a
# derived image (RUN pip install locust-plugins).
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home perfkit
USER perfkit
WORKDIR /home/perfkit
# 5557: the master's port (workers connect to it; workers open no port).
EXPOSE 5557
ENTRYPOINT ["perfkit"]
CMD ["--help"]
