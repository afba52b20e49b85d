# kd-harness with CUDA: PyPI's Linux torch wheels are CUDA builds, so a plain Python base suffices.
#   docker build -t kd-harness .
#   docker run --gpus all --shm-size 8g -v "$PWD/data:/data" -v "$PWD/runs:/runs" kd-harness run --cell cifar100/resnet32-resnet14/kd
# (--shm-size: the folder datasets' DataLoader workers pass batches through shared memory)
FROM python:3.11-slim
# a C compiler: --compile's Triton kernels are built at run time
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kd-harness
COPY pyproject.toml README.md ./
COPY harness ./harness
COPY methods ./methods
RUN pip install --no-cache-dir . psycopg2-binary   # benchmarks.yaml ships inside the package
ENV KD_HARNESS_DATA=/data KD_HARNESS_HOME=/runs
VOLUME ["/data", "/runs"]
ENTRYPOINT ["harness"]
CMD ["--help"]
