"""What a run is, in one package: its folder and records (`folder`), the config made trainable or
restorable (`build`), and where its numbers come from (`provenance`).

    from bccd_jax.run import RunFolder, build, restore

Nothing outside this package reads or writes a run folder's files.
"""

from bccd_jax.config import resume_problems
from bccd_jax.run.build import (Built, Restored, build, cached_cut, choose_variant, export_model, restore,
                               run_dataset, start_weights)
from bccd_jax.run.folder import (CONFIG_FILE, METRICS_CSV, METRICS_FILE, DataRecord, RunFolder, RunRecord,
                                 VariantRecord, VariantResult, finished_variant, read_json)
from bccd_jax.run.provenance import (DATA_DIR_PLACEHOLDER, command_line, cpu_flags, cpu_model, git_commit, hardware,
                                     timestamp, versions)
from bccd_jax.files import write_json

__all__ = ["Built", "Restored", "build", "cached_cut", "choose_variant", "export_model", "restore", "resume_problems",
           "run_dataset", "start_weights",
           "CONFIG_FILE", "METRICS_CSV", "METRICS_FILE", "DataRecord", "RunFolder", "RunRecord", "VariantRecord",
           "VariantResult", "finished_variant", "read_json", "DATA_DIR_PLACEHOLDER", "command_line", "cpu_flags",
           "cpu_model",
           "git_commit", "hardware", "timestamp", "versions", "write_json"]
