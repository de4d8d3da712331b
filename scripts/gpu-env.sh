# Sourced by scripts/gpu-*.sh on the `device` tool's machine: installs selfens (and the wheels carried in .whl/, the
# image lacks omegaconf) into $SITE and points Python and the dataset loader there. `bash scripts/gpu-check.sh
# --prepare` fills .whl/ and .data/ here first.
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/selfens-site}
[ -d .whl ] && "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" .
export PYTHONPATH="$SITE" SELFENS_DATA="$PWD/.data" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
