"""The SLURM profile, proven on a real single-node SLURM cluster started on localhost.

The tiny demo config runs through ``--profile workflow/profiles/slurm``; a small
test-only profile layered on top only fills the profile's two placeholders
(partition, account) and adapts job-status polling and thread counts to this
throwaway cluster, which has two CPUs and no accounting database.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.paths import ROOT
from support.slurm_cluster import PARTITION, PID_FILES, SlurmCluster, alive, install
from support.workflow import SNAKEFILE, TINY_CONFIG, scheduled, write_config

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
PLACEHOLDERS = {"slurm_partition": PARTITION, "slurm_account": "wsiseg_test"}
SLURM_RULES = {"demo": 1, "convert": 3, "patches": 2, "train": 1, "predict": 2, "report": 1}


def real_profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def test_profile_uses_the_slurm_executor_with_placeholders_to_edit():
    profile = real_profile()
    assert profile["executor"] == "slurm"
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is True
    assert profile["jobs"] >= 1 and profile["latency-wait"] >= 5
    resources = profile["default-resources"]
    assert resources["slurm_partition"] == "<partition>" and resources["slurm_account"] == "<account>"
    assert resources["runtime"] > 0 and resources["mem_mb"] > 0


@pytest.mark.parametrize(("gpu", "flag"), [(0, None), (1, "--gpus=1")])
def test_gpu_resource_maps_to_sbatch_gpus_only_when_requested(gpu, flag):
    """config.yaml `resources: {gpu: N}` reaches sbatch as --gpus=N; the default 0 adds nothing."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:  # the parts of a JobExecutorInterface that the sbatch call reads
        threads = 2
        resources = Resources(gpu=gpu, mem_mb=4000, runtime=240, slurm_partition=PARTITION)

    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "rule_predict", "account": "", "partition": ""}
    call = get_submit_command(Job(), {**params, "workdir": "/w"}) + set_gres_string(Job())
    assert "--mem 4000" in call and "-t 240" in call
    assert re.findall(r"--gpus\S*|--gres\S*", call) == ([flag] if flag else [])


@pytest.fixture(scope="module")
def cluster():
    reason = install()
    if reason:
        pytest.skip(f"no SLURM cluster for this test: {reason}")
    running = [str(PID_FILES[name]) for name in ("slurmctld", "slurmd") if alive(PID_FILES[name])]
    if running:
        pytest.skip(f"SLURM daemons are already running here ({', '.join(running)}); not touching them")
    slurm = SlurmCluster()
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


def test_tiny_demo_runs_through_slurm(cluster, tmp_path):
    workdir = tmp_path / "run"
    layer = tmp_path / "test-profile"
    workdir.mkdir()
    layer.mkdir()
    write_config(workdir, TINY_CONFIG)
    # Only the placeholders change; every other default resource comes from the real profile.
    resources = real_profile()["default-resources"]
    assert set(PLACEHOLDERS) <= set(resources)
    test_profile = {
        "default-resources": {**resources, **PLACEHOLDERS},
        "slurm-status-command": "squeue",  # no accounting database, so no sacct
        "slurm-init-seconds-before-status-checks": 3,
        "slurm-keep-successful-logs": True,
        "max-threads": cluster.cpus,  # train asks for 4 threads; the node has 2 CPUs
    }
    (layer / "config.yaml").write_text(yaml.safe_dump(test_profile))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    cmd += ["--directory", str(workdir), "--profile", str(PROFILE), "--profile", str(layer), "--verbose"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    out = workdir / "out"
    assert pd.read_csv(out / "submission.csv", keep_default_na=False)["id"].tolist() == ["demo_2"]
    assert pd.read_csv(out / "metrics.csv")["slide_id"].tolist() == ["demo_1", "demo_2", "mean"]
    assert (out / "models" / "tiny" / "model.ckpt").stat().st_size > 0

    # Every job was an sbatch submission with the profile's resources ...
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", log)
    per_rule = {}
    for job_id, job_log in submitted:
        rule = Path(job_log).relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        per_rule[rule] = per_rule.get(rule, 0) + 1
        assert Path(job_log).name == f"{job_id}.log" and Path(job_log).exists()
    assert {rule: per_rule.get(rule) for rule in SLURM_RULES} == SLURM_RULES, log[-6000:]
    assert sum(per_rule.values()) == sum(scheduled(result).values()) - 1  # all but the local `all`
    calls = re.findall(r"sbatch call: (.*)", log)
    assert len(calls) == len(submitted)
    for call in calls:
        assert f"-p {PARTITION}" in call and f"-A {PLACEHOLDERS['slurm_account']}" in call
        assert re.search(r" -t \d+", call) and re.search(r" --mem \d+", call)
        assert "--gpus" not in call  # resources.gpu defaults to 0
    train = next(call for call in calls if "rule_train" in call)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    defaults = {key: spec.get("default") for key, spec in schema["properties"]["resources"]["properties"].items()}
    assert f"-t {defaults['train_runtime']} " in train and f"--mem {defaults['train_mem_mb']} " in train
    assert "--cpus-per-task=2" in train

    # ... that slurmctld itself scheduled on the node and saw finish with exit status 0.
    controller = cluster.controller_log()
    for job_id, _ in submitted:
        started = (  # by the main scheduler or by the backfill scheduler
            rf"sched: Allocate JobId={job_id} NodeList=\S+ #CPUs=\d+ Partition={PARTITION}\n",
            rf"sched/backfill: _start_job: Started JobId={job_id} in {PARTITION} on \S+\n",
        )
        assert re.search("|".join(started), controller), controller[-3000:]
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in controller
