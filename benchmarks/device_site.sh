# Sourced by the device scripts (h200.sh, lease.sh) from the checkout's root: the wheels carried in
# .whl/ (the pinned transformers, pydantic and the rest the device lacks) installed into /tmp/site,
# once per machine and set of wheels, and the environment that reads them.
if [ -d .whl ] && ! ls .whl | cmp -s - /tmp/site/.wheels; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    ls .whl > /tmp/site/.wheels
fi
if [ -d /tmp/site ]; then
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
