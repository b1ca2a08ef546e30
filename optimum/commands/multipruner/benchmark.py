"""`optimum-cli multipruner benchmark`: pruned vs dense OpenVINO IR, interleaved, on one OpenVINO device."""

from __future__ import annotations

from argparse import ArgumentParser

from optimum_multipruner_constants import BENCHMARK_ENGINES

from .common import MultiPrunerSubcommand, parse_key_value


class BenchmarkCommand(MultiPrunerSubcommand):
    HELP = "Measure latency, throughput, peak memory and size of a pruned vs a dense OpenVINO model."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("-m", "--model", required=True, help="OpenVINO IR folder of the pruned model")
        parser.add_argument("-b", "--baseline", required=True, help="OpenVINO IR folder of the dense model")
        parser.add_argument(
            "--engine", choices=BENCHMARK_ENGINES, default=BENCHMARK_ENGINES[0],
            help="openvino (default): raw runtime, prefill and per-token decode latency; genai: openvino-genai's "
            "LLMPipeline (the OpenVINO Model Server path), time to first token, time per output token, throughput",
        )
        parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
        parser.add_argument("--prompt-length", type=int, default=128, help="prefill tokens (default 128)")
        parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
        parser.add_argument("--repetitions", type=int, default=5, help="measured runs per model (default 5)")
        parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per model first (default 1)")
        parser.add_argument(
            "--ov-config", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE",
            help="OpenVINO compile property, repeatable (default PERFORMANCE_HINT=LATENCY)",
        )
        parser.add_argument("--output", help="write the results as JSON to this file")
        parser.add_argument("--plot", help="write a PNG chart of the pruned/dense ratios (needs matplotlib)")
        parser.add_argument("--overwrite", action="store_true", help="replace existing --output/--plot files")

    def execute(self) -> None:
        args = self.args
        from optimum_multipruner.utils import check_output_file

        check_output_file(args.output, args.overwrite)
        check_output_file(args.plot, args.overwrite)
        from optimum_multipruner.benchmark import benchmark, format_table, plot_ratios, save_results

        results = benchmark(
            args.model,
            args.baseline,
            device=args.device,
            prompt_length=args.prompt_length,
            new_tokens=args.new_tokens,
            repetitions=args.repetitions,
            warmup=args.warmup,
            ov_config=dict(args.ov_config) or None,
            engine=args.engine,
        )
        print(format_table(results))
        if args.output:
            save_results(results, args.output)
        if args.plot:
            plot_ratios(results, args.plot)
