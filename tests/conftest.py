"""Shared fixtures: a real local[2] Spark session, a Spark standalone cluster on 127.0.0.1, the
shared data directory, horovodrun, ./spark-submit.sh."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("AFM_VENV", str(VENV_BIN.parent))  # ./spark-submit.sh runs the venv the tests run in


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real logs (never copied into the repo): AFM_DATA_DIR, default ../shared/data."""
    d = Path(os.environ.get("AFM_DATA_DIR", REPO.parent / "shared" / "data"))
    if not d.is_dir():
        pytest.fail(f"data directory {d} not found; set AFM_DATA_DIR to the shared data sets")
    return d


@pytest.fixture(scope="session")
def spark():
    """A real Spark session on local[2], UI off, few shuffle partitions for small test data."""
    from afm_dist.spark.session import build_session

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors use this venv, as spark-submit.sh does

    session = build_session(
        "afm-dist-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.driver.memory": "2g",
        },
    )
    yield session
    session.stop()


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` s or when a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: a cluster process exited with {p.returncode}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone master and two workers of one core each on 127.0.0.1
    (afm_dist.spark.standalone), started once and stopped at the end of the session.

    Yields {"url", "env" (to launch ./spark-submit.sh in), "work" (the workers' directory: one
    app-* per application), "procs"}."""
    from afm_dist.spark.standalone import standalone_cluster as start

    with start(tmp_path_factory.mktemp("cluster"), workers=2, cores=1) as cluster:
        yield {"url": cluster.url, "env": cluster.env, "work": cluster.work, "procs": cluster.procs}


def spark_submit(job: str, args: list, *, env: dict[str, str] | None = None, timeout: float = 600,
                 master: str = "local[2]") -> subprocess.CompletedProcess:
    """``./spark-submit.sh jobs/JOB.py ARGS`` for real, on ``master`` unless ``env`` names one
    (AFM_SPARK_MASTER, as ``standalone_cluster``'s env does)."""
    full_env = {"AFM_SPARK_MASTER": master, **(env or os.environ)}
    return subprocess.run(["bash", str(REPO / "spark-submit.sh"), f"jobs/{job}.py", *map(str, args)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def horovod_command(args: list[str], *, np: int = 2, env: dict[str, str] | None = None,
                    hvd_flags: tuple[str, ...] = ()) -> tuple[list[str], dict]:
    """``horovodrun -np N -H localhost:N --gloo [HVD_FLAGS] python ARGS`` and the environment to run it in."""
    cmd = [str(VENV_BIN / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", "--gloo",
           "--network-interface", "lo", *hvd_flags, sys.executable, *args]
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return cmd, full_env


def run_horovod(args: list[str], *, np: int = 2, timeout: float = 300, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Launch horovodrun for real (see horovod_command) and wait for it."""
    cmd, full_env = horovod_command(args, np=np, env=env)
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def job_module(name: str):
    """``jobs/NAME.py`` as a module (jobs/ is not a package): the one way tests load a job."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"afm_jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(name: str, argv: list[str], spark) -> int:
    """Run ``jobs/NAME.py``'s main(argv) in this process, on the tests' Spark session."""
    return job_module(name).main([str(a) for a in argv], spark=spark)


PLANTED_ROWS = 20_000
# A small model, and no Gibbs sampling after an FM's SGD (tests/train/test_gibbs.py tests it; with it the
# FM's embedding size grows by the samples', which an AFM --init-from with --embedding-dim 16 refuses).
SMALL_MODEL = ["--embedding-dim", "16", "--attention-factor", "16", "--log-every", "1000", "--mcmc-sweeps", "0"]


@pytest.fixture(scope="session")
def planted_data(spark, tmp_path_factory) -> Path:
    """Preprocessed synthetic ratings (user x item and item x daytime planted), 70/20/10 splits,
    made by the real jobs: generated logs, then jobs/preprocess.py."""
    from afm_dist.synthetic import generate_logs

    root = tmp_path_factory.mktemp("planted")
    logs = root / "logs"
    (generate_logs(spark, PLANTED_ROWS, seed=11, partitions=2)
     .write.option("header", True).option("sep", "\t").csv(str(logs)))
    out = root / "data"
    rc = run_job("preprocess", ["--schema", str(REPO / "schemas/synthetic.yaml"), "--input", str(logs),
                                "--output", str(out), "--rows-per-group", "1000"], spark)
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def planted_models(planted_data, tmp_path_factory) -> dict[str, Path]:
    """FM, then AFM initialised from it, trained with horovodrun -np 2 on planted_data."""
    root = tmp_path_factory.mktemp("models")
    dirs = {"fm": root / "fm", "afm": root / "afm"}
    for name, extra in (("fm", []), ("afm", ["--init-from", str(dirs["fm"])])):
        proc = run_horovod(["-m", "afm_dist.train", "--data", str(planted_data), "--model", name,
                            "--output", str(dirs[name]), "--epochs", "8", "--batch-size", "128",
                            *SMALL_MODEL, *extra], np=2)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return dirs
