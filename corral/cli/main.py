"""``corral`` command line: one module per command, imported only when that command runs,
so ``corral --help`` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import sys

import corral
from corral.cli import HelpFormatter

# command name -> (module, one-line help)
COMMANDS = {
    "generate": ("corral.cli.generate", "generate a completion for a prompt"),
    "serve": ("corral.cli.serve", "serve a model over an OpenAI-compatible HTTP API"),
    "bench": ("corral.cli.bench", "benchmark an OpenAI-compatible server (corral bench serve ...)"),
    "eval": ("corral.cli.eval", "perplexity or greedy agreement of a model on held-out text"),
    "quantize": ("corral.cli.quantize", "write a model's weights packed (int8, rtn/awq/gptq int4) into a directory"),
    "prune": ("corral.cli.prune", "a smaller model: layers, heads or channels removed by importance (docs/pruning.md)"),
    "distill": ("corral.cli.distill", "train a student toward a teacher's next-token distributions (docs/distillation.md)"),
    "gateway": ("corral.cli.gateway", "one OpenAI-compatible endpoint over model groups of replicas (docs/gateway.md)"),
    "audit": ("corral.cli.audit", "verify the gateway's audit hash chain, or query its records (docs/audit.md)"),
    "keys": ("corral.cli.keys", "create, list, revoke or rotate the gateway's API keys (docs/gateway.md)"),
    "plan": ("corral.cli.plan", "memory, latency, replicas and cost of serving a model on given hardware (docs/planner.md)"),
    "deploy": ("corral.cli.deploy", "a gateway config's groups on Kubernetes (manifests) or Ray Serve (docs/kubernetes.md, docs/ray.md)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="From a model file to a production LLM endpoint.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"corral {corral.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        sub.set_defaults(_module=module_name)
        _add_arguments(module_name, sub)
    return parser


def _add_arguments(module_name: str, parser: argparse.ArgumentParser) -> None:
    # Command modules import torch only inside `run`, so declaring arguments stays cheap.
    importlib.import_module(module_name).add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from corral.errors import CorralError

    try:
        return importlib.import_module(args._module).run(args)
    except CorralError as exc:
        print(f"corral {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
