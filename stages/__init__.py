"""Stage scripts: thin DVC entry points that read params, call `xai`, write outputs and log.

Before torch is first imported (hence here), a stage chooses how its OpenMP threads wait: passively
in a queued experiment (`dvc queue start -j N`, whose workers share the cores) or when other
processes keep the cores busy as it starts, spinning otherwise (`xai.pipeline.sharing`).
"""

from xai.pipeline.paths import in_queued_experiment
from xai.pipeline.sharing import choose_wait_policy

choose_wait_policy(in_queued_experiment())
