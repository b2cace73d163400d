# Source on a lent GPU machine, from the repo root: wheels carried in .whl/ (protobuf, grpcio, ...)
# go to /tmp/site, the package is mirrored under /tmp/pkg (no pip install of the project needed).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
python3 scripts/package_tree.py /tmp/pkg || return 1
# PYTHONSAFEPATH: `python -m` (also in child processes) must not put the repo root, whose epochserve/
# folder is only the package root, ahead of the mirrored package.
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
