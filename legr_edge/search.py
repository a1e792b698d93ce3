"""Learn a LeGR global filter ranking and produce a family of pruned networks.

Examples (from the repository root):

    # the embedded default: shapes (generated, no download) + CIFAR ResNet-20, 9-16 min on 2 cores
    python -m legr_edge.search
    # a seconds-long check of the whole pipeline (digits, which ships with the package)
    python -m legr_edge.search --preset smoke --out runs/smoke
    # the published method (raw L2 norms, group sum, accuracy after tau steps), to compare
    python -m legr_edge.search --scoring paper --out runs/paper
    # CIFAR-10 from the python-pickle folder, a pretrained checkpoint, widths for TensorRT
    python -m legr_edge.search --model resnet56 --dataset cifar10 --data-dir ~/data/cifar-10-batches-py \\
        --checkpoint resnet56.pt --profile profiles/jetson-orin-nano.toml --preset paper
    # your own CNN: a factory function returning an nn.Module, plus its state_dict
    python -m legr_edge.search --model mypkg.nets:make_net --checkpoint net.pt --dataset imagefolder \\
        --data-dir ~/data/flowers
    # latency targets: fractions of the dense network's latency predicted by the device's table
    python -m legr_edge.search --out runs/r20-lat --checkpoint runs/resnet20-digits/models/dense/weights.pt \
        --cost latency --latency-table runs/resnet20-digits/latency_table_cpu-ort.json --targets 0.7,0.5
    # asynchronous search on 4 GPUs of this workstation (pip install "legr_edge[distributed]")
    python -m legr_edge.search --model resnet56 --preset paper --workers 4 --out runs/r56-paper
    # on an existing Ray cluster
    python -m legr_edge.search --model resnet56 --preset paper --ray-address auto --out runs/r56-paper
    # continue an interrupted run
    python -m legr_edge.search --out runs/resnet20-shapes --resume

Writes into --out (default runs/<model>-<dataset>): config.json, ranking.json,
search_log.csv (candidates in arrival order, with their worker), models/<name>/{arch.json,weights.pt,metrics.json}, flops_table.csv,
tradeoff_flops.png, and (unless --no-export) onnx/ + data/eval.npz for the device.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from legr_edge.cli import EXIT_STATUS, run_cli, setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m legr_edge.search", description=__doc__, epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="registered name (see --list-models) or package.module:factory; default resnet20")
    g.add_argument("--checkpoint", help="state_dict of the dense model; without it the model is trained first")
    g.add_argument("--dataset", help="shapes (default, generated), digits (embedded), cifar10, cifar100, imagefolder")
    g.add_argument("--data-dir", help="folder of cifar10/cifar100 (python pickle batches) or imagefolder (train/, val/)")
    g.add_argument("--input-size", type=_size, help="H,W (or one number) the model sees; default: the data "
                   "set's own size, for imagefolder the registered model's (224 for ImageNet models)")
    g.add_argument("--val-fraction", type=float, help="share of the training split held out for validation (0.1)")
    g.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    g = p.add_argument_group("run")
    g.add_argument("--preset", help="smoke (seconds), default (embedded run, 9-16 min on 2 CPU cores), "
                                    "thorough (tau 50, for a long fine-tune: the search takes 3-4x as long), paper")
    g.add_argument("--out", help="run directory (default runs/<model>-<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--device", help="auto (default), cpu or cuda")
    g.add_argument("--seed", type=int, help="seed of everything random (0)")
    g.add_argument("--workers", type=int, help="evaluate candidates and fine-tune the family on N Ray workers "
                   "on this machine (one per GPU, or a share of the CPU threads each); needs the [distributed] "
                   "extra. Default: this process, no Ray")
    g.add_argument("--ray-address", help="join this existing Ray cluster (e.g. auto, or HEAD_IP:6379) and use "
                   "--workers of its workers (default: one per GPU of the cluster, else per CPU)")
    g.add_argument("--batch-size", type=int, help="training batch size")
    g.add_argument("--pretrain-epochs", type=int, help="epochs of dense training when no --checkpoint")
    g.add_argument("--pretrain-lr", type=float, help="peak learning rate of dense training (cosine)")
    g = p.add_argument_group("pruning and search")
    g.add_argument("--targets", type=_floats, help="MAC fractions to keep, comma separated (0.8,0.6,0.5,0.4,0.3,0.2)")
    g.add_argument("--search-target", type=float, help="MAC fraction the ranking is learned at (smallest target)")
    g.add_argument("--scoring", help="v2 (default: normalised scores, seeded search, validation loss "
                                     "after 10 common SGD steps and BatchNorm recalibration) or paper (the published method, for comparison)")
    g.add_argument("--score-norm", help="per-layer normalisation of the base scores: zscore (default), mean, "
                                        "lamp, none")
    g.add_argument("--score-source", help="what a filter's base score measures: coupled (default: every "
                                          "weight its channel touches: the convs writing it, its BatchNorm, "
                                          "the inputs of the layers reading it) or filter (its own squared "
                                          "L2 norm, the paper's)")
    g.add_argument("--group-reduce", help="score of a coupled channel: mean (default) or sum of its members'")
    g.add_argument("--no-seed-population", dest="seed_population", action="store_false",
                   help="do not seed the search with the identity, the paper's, uniform and stream rankings")
    g.add_argument("--stream-seeds", type=_floats,
                   help="also seed uniform pruning with the residual streams (channels several convs "
                        "write, tied by residual additions) kept wider: s keeps u + s*(1-u) of a stream, "
                        "u its uniform share, comma separated in (0, 1] (default 0.25,0.5; '' for none)")
    g.add_argument("--init-scale", type=float, help="std of log-alpha and kappa (in layer stds) of random "
                                                    "initial members (0.5; paper 1.0)")
    g.add_argument("--mutate-scale", type=float, help="the same for mutations (0.5; paper 1.0)")
    g.add_argument("--population", type=int, help="evolution population P (24; paper 64)")
    g.add_argument("--sample", type=int, help="tournament sample S (6; paper 16)")
    g.add_argument("--candidates", type=int, help="candidates evaluated in total, initial population included (80; paper 400)")
    g.add_argument("--recal-batches", type=int, help="training batches that re-estimate BatchNorm statistics "
                                                     "before a candidate is scored (8; 0 = off)")
    g.add_argument("--fitness-val-limit", type=int, help="validation images a candidate is scored on (5000; 0 = all)")
    g.add_argument("--fitness-targets", type=_floats, help="score candidates at these MAC fractions and average "
                                                           "(default: the search target)")
    g.add_argument("--tau", type=int, help="SGD steps per candidate before scoring, on batches common to "
                                           "every candidate (10; paper 40, each candidate its own)")
    g.add_argument("--tau-lr", type=float, help="learning rate of those steps (0.01)")
    g.add_argument("--fitness", help="loss (default) or accuracy, on the fixed validation subset")
    g.add_argument("--finalists", type=int, help="best candidates re-scored with the seeds on fresh batches (5)")
    g.add_argument("--final-rounds", type=int, help="fresh recalibration draws of that re-scoring (1)")
    g.add_argument("--final-tau", type=int, help="SGD steps before each finalist's re-scoring (default: "
                                                 "--tau): a closer proxy of fine-tuning, paid only by the finalists")
    g.add_argument("--final-targets", choices=("family", "search"),
                   help="where the finalists are re-scored: at every target of the family (default: a "
                        "ranking that collapses at a larger member loses) or only at the search target")
    g.add_argument("--member-choice", choices=("per_target", "one"),
                   help="per_target (default): each family member is cut with the finalist that re-scored "
                        "best at its own target; one: every member with the single winning ranking")
    g.add_argument("--no-target-seeds", dest="target_seeds", action="store_false",
                   help="per_target: do not let the uniform and stream seeds computed AT each family "
                        "target compete for that member (by default they are re-scored there, about 3 "
                        "evaluations per target, and a member is cut with one when it re-scores best)")
    g.add_argument("--round-to", type=int, help="keep every prunable width a multiple of N (default: the profile's)")
    g.add_argument("--profile", help="target device profile, a TOML path or a name in profiles/ (default cpu-ort); "
                                     "its round_to and opset are used unless given")
    g.add_argument("--min-fraction", type=float, help="per-layer floor as a share of its channels (0.1)")
    g.add_argument("--min-channels", type=int, help="per-layer floor in channels (2)")
    g.add_argument("--cost", help="macs (default) or latency: what --targets are fractions of; latency "
                                  "needs --latency-table")
    g.add_argument("--latency-table", help="RUN/latency_table_<profile>.json built on the device by "
                                           "python -m legr_edge.latency_table; with --cost macs it only "
                                           "adds predicted latency to flops_table.csv")
    g.add_argument("--targets-ms", type=_floats, help="absolute latency targets in ms (with --cost latency), "
                                                      "instead of --targets")
    g.add_argument("--no-staircase", dest="staircase", action="store_false",
                   help="latency cost: do not widen groups where the table says a wider width costs the same")
    g.add_argument("--ignore-layers", type=_names, help="comma-separated module names never pruned")
    g = p.add_argument_group("family and export")
    g.add_argument("--finetune-epochs", type=int, help="fine-tune epochs of every family member")
    g.add_argument("--finetune-lr", type=float, help="fine-tune learning rate (SGD Nesterov, x0.2 at 30/60/80%%)")
    g.add_argument("--no-export", dest="export", action="store_false", help="skip the ONNX export at the end")
    g.add_argument("--opset", type=int, help="ONNX opset of the export (default: the profile's, else 18)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W or one number, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W or one number, got {text!r}")
    return parts[0], parts[1]


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    setup_logging(args.pop("verbose", False))
    return run_cli(lambda: _run(args))


def _run(args: dict[str, Any]) -> int:
    if args.pop("list_models", False):
        from legr_edge.models.registry import list_models
        print("\n".join(list_models()))
        return 0
    from legr_edge.config import resolve
    from legr_edge.workflow import run_search

    resume = args.pop("resume", False)
    run_search(resolve(args), resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
