#!/bin/bash
# Run on the lent GPU machine from the repository root, with .gpu/ carried: .gpu/pdserve (this
# branch's package), .gpu/benchmarks/gpu_serving.py, .gpu/model/efficientnet_lite0 (config.yaml,
# labels.txt, 1/model.onnx from pdserve convert), .gpu/images (128 sample JPEGs) and .gpu/whl (the
# server's packages the GPU image lacks: fastapi, starlette, pydantic, pydantic-core,
# pydantic-settings, python-dotenv, python-multipart, uvicorn, annotated-types, annotated-doc,
# typing-inspection, opentelemetry-api). onnxruntime-gpu 1.31.1 (255.6 MB, more than one call may
# carry) is sent before as /root/parts/ortpart.00-05: `tar c onnxruntime ...dist-info | xz -9e`
# of the unpacked wheel without libonnxruntime_providers_tensorrt.so (no TensorRT there), split
# -b 34M, one part a call while the machine stays warm. Reassembled and hash-checked here.
set -x
cd "$(dirname "$0")/.."
cat /root/parts/ortpart.0* > /root/ort.tar.xz
echo "a3318cc4bbe4037273353563f747c8f3efb96e4f93294acde9246f953692ac01  /root/ort.tar.xz" | sha256sum -c - || exit 3
[ -d /root/site/onnxruntime ] || mkdir -p /root/site && [ -d /root/site/onnxruntime ] || xz -d < /root/ort.tar.xz | tar x -C /root/site || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .gpu/whl/*.whl || exit 5
export PYTHONPATH=/root/site:$PWD/.gpu PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print(o.__file__, o.__version__, o.get_available_providers())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep "Model name"; nproc
timeout ${BENCH_TIMEOUT:-500} python3 .gpu/benchmarks/gpu_serving.py --model .gpu/model/efficientnet_lite0 --images .gpu/images --out $OUT/gpu.json "$@" 2>&1 | tee $OUT/gpu.log
ls /tmp/pdserve-bench-*.log 2>/dev/null | head -3 | while read f; do tail -20 $f; done
