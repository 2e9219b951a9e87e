"""Data-parallel training with Horovod over Petastorm shards of a preprocessed data set.

Launch (2 CPU workers on this machine; Gloo)::

    horovodrun -np 2 -H localhost:2 --gloo \\
        python -m afm_dist.train --data out/frappe --model fm --output out/models/fm
    horovodrun -np 2 -H localhost:2 --gloo \\
        python -m afm_dist.train --data out/frappe --model afm --init-from out/models/fm \\
        --output out/models/afm

On GPU hosts (one GPU per local rank, NCCL when Horovod has it)::

    horovodrun -np 8 -H node1:4,node2:4 python -m afm_dist.train --data ... --model afm ...

A single process without horovodrun also works (size 1): ``python -m afm_dist.train --data ...``.
Inside a Spark application (YARN, Kubernetes, standalone: no SSH, no host list), the same trainer
and flags run as Spark tasks: ``./spark-submit.sh jobs/train.py ... --num-proc 2``.
``--batch-size`` is the *global* batch: each of N workers takes batch/N rows a step and Horovod
averages the gradients, so results do not depend on the number of workers and the learning rate
needs no scaling. This module only parses the flags; the recipe is afm_dist/training/.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from afm_dist.dataset import DatasetError
from afm_dist.io import OutputPathError, UnsupportedSchemeError, local_path
from afm_dist.model_dir import TrainedModel
from afm_dist.models import MODEL_NAMES, ModelConfig
from afm_dist.models.afm import ATTENTION_SCALES
from afm_dist.training import TrainConfig
from afm_dist.training.checkpoint import CHECKPOINT, checkpoint_embedding_dim, open_checkpoint
from afm_dist.training.config import AFM_FINE_TUNE_LR, LR
from afm_dist.training.launch import run
from afm_dist.training.optimizers import OPTIMIZERS, SPARSE_OPTIMIZERS


def build_parser(prog: str = "python -m afm_dist.train", description: str | None = __doc__, *,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The trainer's flags; a launcher (jobs/train.py) adds its own before parsing."""
    p = parser_class(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output directory of jobs/preprocess.py")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--init-from", help="a trained FM model directory whose embeddings and linear part initialise this "
                                       "model: its SGD weights where its model is their Gibbs blend (see --mcmc-sweeps); "
                                       "an AFM from those ends no worse than the blend on validation (where the blend "
                                       "is lower than its best epoch, the blend is written as the AFM)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the schema's, else 128)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer,
                   help="adagrad (the paper's; lazy on sparse tables), rowwise_adagrad (one accumulator per table "
                        "row: k times less optimizer memory), adam (dense tables only)")
    p.add_argument("--w0-init", choices=("mean", "zero"), default=TrainConfig.w0_init,
                   help="where w0 starts in a run not started from an FM: the training split's mean target "
                        "(default), or 0 as libFM and the paper")
    p.add_argument("--lr", type=float, default=None,
                   help=f"the optimizer's learning rate (default {LR}; {AFM_FINE_TUNE_LR} for --model afm with "
                        "--init-from: fine-tuning a trained FM at the lower rate ends lower on validation, "
                        "docs/results/quality.md)")
    p.add_argument("--loss", choices=["squared", "logistic"], default=TrainConfig.loss)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--attention-l2", type=float, default=TrainConfig.attention_l2,
                   help="lambda of the L2 penalty lambda*||W||^2 on AFM's attention weights W, added to the "
                        "batch's MEAN loss. The paper's reference code adds it to the batch's sum of squared "
                        "errors (both halved), so its lambda equals this one times the global batch size: "
                        "the paper's lambda 8 at batch 128 is --attention-l2 0.0625")
    p.add_argument("--embedding-l2", type=float, default=None,
                   help="a fixed L2 on the embeddings v_i of each batch's features (libFM's SGD -regular r2), "
                        "added to the mean loss; giving it or --linear-l2 turns --l2-schedule off (the other at 0)")
    p.add_argument("--linear-l2", type=float, default=None,
                   help="a fixed L2 on the linear weights w_i of each batch's features (libFM's -regular r1)")
    p.add_argument("--l2-schedule", type=_parse_floats, default=TrainConfig.l2_schedule, metavar="X,X,...",
                   help="the default regularisation: the L2 strength of the embeddings and linear weights starts "
                        "at the first value; after --l2-patience epochs whose validation RMSE does not improve, "
                        "training goes back to the best epoch's weights and on with the next value; --patience "
                        "counts at the last (default %(default)s)")
    p.add_argument("--l2-patience", type=int, default=TrainConfig.l2_patience,
                   help="epochs without improvement before the next strength of --l2-schedule")
    p.add_argument("--average-tail", type=_parse_bool, default=TrainConfig.average_tail, metavar="BOOL",
                   help="from the first epoch at the last L2 strength that does not improve, also score the mean "
                        "of the epochs' weights on validation and keep it where it is better (SWA; default "
                        "%(default)s)")
    p.add_argument("--mcmc-sweeps", type=int, default=TrainConfig.mcmc_sweeps, metavar="N",
                   help="--model fm: after SGD, N sweeps of Gibbs sampling (libFM's MCMC) of an FM of --mcmc-dim "
                        "factors; --mcmc-samples of its samples, kept as one FM, are blended with the SGD FM at "
                        "the weight validation chooses, and the blend is the model where it is better on "
                        "validation (an FM of --embedding-dim + --mcmc-dim x --mcmc-samples; an AFM --init-from "
                        "it starts from the SGD FM, and is the blend where it does not beat it). 0: off. Default: 300 for --model fm with --loss squared, in a static "
                        "run; 0 otherwise")
    p.add_argument("--mcmc-dim", type=int, default=TrainConfig.mcmc_dim, metavar="K",
                   help="factors of the sampled FM (default %(default)s)")
    p.add_argument("--mcmc-samples", type=int, default=TrainConfig.mcmc_samples, metavar="S",
                   help="samples kept, evenly spaced over the chain (default %(default)s)")
    p.add_argument("--commit-every", type=int, default=TrainConfig.commit_every, metavar="STEPS",
                   help="elastic runs (horovodrun --min-np/--max-np/--host-discovery-script): steps between the "
                        "in-memory commits a lost worker's survivors go back to, besides one at every epoch's end "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--shuffle-buffer", type=int, default=TrainConfig.shuffle_buffer)
    p.add_argument("--no-clip-predictions", dest="clip_predictions", action="store_false")
    p.add_argument("--log-every", type=float, default=TrainConfig.log_every)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / local workers)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    defaults = ModelConfig()
    p.add_argument("--sparse-embeddings", type=_parse_bool, default=None, metavar="BOOL",
                   help="sparse gradients for the feature tables, so that a step touches only its batch's rows "
                        "(default: true, false with --optimizer adam, which takes no sparse gradients)")
    for f in dataclasses.fields(ModelConfig):
        value = getattr(defaults, f.name)
        if f.name == "sparse_embeddings":
            continue
        if f.name == "embedding_dim":  # None: the --init-from FM's, else the default
            p.add_argument("--embedding-dim", type=int, default=None,
                           help=f"k (default: with --resume the run's; the --init-from FM's, of its SGD weights where "
                                f"its model is their blend (the blend's size starts from the blend); else {value})")
            continue
        if isinstance(value, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_bool, default=value, metavar="BOOL")
        elif isinstance(value, (int, float)):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
        elif isinstance(value, str):  # attention_scale
            p.add_argument(f"--{f.name.replace('_', '-')}", choices=ATTENTION_SCALES, default=value)
        elif isinstance(value, tuple):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_ints, default=value, metavar="N,N,...")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The trainer's flags as a TrainConfig; a refusal exits 2 with the usage (see ``config_from``)."""
    p = build_parser()
    return config_from(vars(p.parse_args(argv)), p)


class _RaisingParser(argparse.ArgumentParser):
    """The trainer's parser for callers that report a refusal themselves: ``error`` raises."""

    def error(self, message: str):
        raise ValueError(message)


def check_args(argv: list[str]) -> TrainConfig:
    """The trainer's flags as a TrainConfig, as ``parse_args`` makes it, for a caller that checks
    flags for later runs (afm_dist.search): a refusal is raised, not printed with the usage.

    Raises:
        ValueError: argparse's message (a value of the wrong type, an unknown flag), or a
            combination that cannot work (``TrainConfig.check``).
    """
    p = build_parser(parser_class=_RaisingParser)
    return config_from(vars(p.parse_args(argv)), p)


def config_from(ns: dict, p: argparse.ArgumentParser) -> TrainConfig:
    """The TrainConfig of parsed trainer flags (``build_parser``'s, a launcher's own removed):
    paths made local (``file://`` URIs stripped), settings checked. A refusal is ``p.error``:
    exit 2 with the usage, before Horovod or Spark starts."""
    try:
        for flag in ("data", "output", "init_from"):
            if ns[flag] is not None:
                ns[flag] = local_path(ns[flag], "--" + flag.replace("_", "-"))
    except UnsupportedSchemeError as e:
        p.error(str(e))
    if ns["sparse_embeddings"] is None:
        ns["sparse_embeddings"] = ns["optimizer"] in SPARSE_OPTIMIZERS
    if ns["embedding_dim"] is None:
        ns["embedding_dim"] = ((_resume_dim(ns["output"]) if ns["resume"] else _init_from_dim(ns["init_from"]))
                               or ModelConfig.embedding_dim)
    model_config = ModelConfig(**{f.name: ns.pop(f.name) for f in dataclasses.fields(ModelConfig) if f.name in ns})
    cfg = TrainConfig(**ns, model_config=model_config)
    try:
        cfg.check()  # combinations that cannot work: refused before Horovod starts (exit 2, usage)
    except ValueError as e:
        p.error(str(e))
    return cfg


def _init_from_dim(fm_dir: str | None) -> int | None:
    """The embedding size of the FM in ``fm_dir`` (of its SGD weights, where its model is their
    Gibbs blend: the run starts from them); None without one, or where it does not load
    (``check_run`` says why)."""
    if not fm_dir:
        return None
    try:
        fm = TrainedModel.load(fm_dir)
        return fm.sgd_embedding_dim or fm.config.embedding_dim
    except (DatasetError, OSError, ValueError, KeyError, TypeError):
        return None


def _resume_dim(output: str) -> int | None:
    """The embedding size of the run in ``output`` to resume (its checkpoint's, memory-mapped);
    None where there is none (``check_run`` says why)."""
    try:
        return checkpoint_embedding_dim(open_checkpoint(Path(output) / CHECKPOINT))
    except OutputPathError:
        return None


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _parse_list(s: str, cast: type, what: str) -> tuple:
    try:
        return tuple(cast(x) for x in s.split(",") if x)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from e


def _parse_floats(s: str) -> tuple[float, ...]:
    return _parse_list(s, float, "numbers")


def _parse_ints(s: str) -> tuple[int, ...]:
    return _parse_list(s, int, "integers")


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and train on this rank; exit status 0 done, 2 unusable data, output or
    settings (the error on stderr, no traceback)."""
    return run(parse_args(argv))  # the data set and the model's layout are checked before Horovod starts


if __name__ == "__main__":
    sys.exit(main())
