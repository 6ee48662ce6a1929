"""Stage scripts: thin DVC entry points that read params, call `xai`, write outputs and log.

Queued experiments (`dvc queue start -j N`) share the cores with each other, and OpenMP threads
that spin while they wait starve the other workers: two VIBI workers on 2 cores each ran at 26 %
of their solo speed, against 50 % with passive waiting (`python -m xai.pipeline.bench --only "vibi train"`,
two at once). So queued workers wait passively unless the user chose a policy. This must happen
before torch is first imported, hence here.
"""

import os

from xai.pipeline.paths import in_queued_experiment

if in_queued_experiment():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
