"""`optimum-cli multipruner benchmark`: pruned vs dense OpenVINO IR, interleaved, on one OpenVINO device."""

from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError

from optimum.commands.base import BaseOptimumCLICommand


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class BenchmarkCommand(BaseOptimumCLICommand):
    HELP = "Measure prefill/decode latency, tokens/s, peak memory and size of a pruned vs a dense OpenVINO model."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("-m", "--model", required=True, help="OpenVINO IR directory of the pruned model")
        parser.add_argument("-b", "--baseline", required=True, help="OpenVINO IR directory of the dense model")
        parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
        parser.add_argument("--prompt-length", type=int, default=128, help="prefill tokens (default 128)")
        parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run (default 32)")
        parser.add_argument("--repetitions", type=int, default=5, help="measured runs per model (default 5)")
        parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per model first (default 1)")
        parser.add_argument(
            "--ov-config", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
            help="OpenVINO compile property, repeatable (default PERFORMANCE_HINT=LATENCY)",
        )
        parser.add_argument("--output", help="write the results as JSON to this file")
        parser.add_argument("--plot", help="write a PNG chart of the pruned/dense ratios (needs matplotlib)")

    def run(self) -> None:
        from optimum_multipruner.benchmark import benchmark, format_table, plot_ratios, save_results

        args = self.args
        results = benchmark(
            args.model,
            args.baseline,
            device=args.device,
            prompt_length=args.prompt_length,
            new_tokens=args.new_tokens,
            repetitions=args.repetitions,
            warmup=args.warmup,
            ov_config=dict(args.ov_config) or None,
        )
        print(format_table(results))
        if args.output:
            save_results(results, args.output)
        if args.plot:
            plot_ratios(results, args.plot)
