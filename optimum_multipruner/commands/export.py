"""`optimum-cli multipruner export`: a pruned checkpoint (or a dense model + pruning record) to OpenVINO IR."""

from __future__ import annotations

from argparse import ArgumentParser

from optimum.commands.base import BaseOptimumCLICommand

from .prune import add_model_loading_args, load_model_and_tokenizer

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")  # `optimum_multipruner.exporters.WEIGHT_FORMATS` without None


class ExportCommand(BaseOptimumCLICommand):
    HELP = "Export a pruned model to OpenVINO IR (or apply a pruning record to a dense model, then export)."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "-m", "--model", required=True,
            help="pruned checkpoint directory or Hub id; with --record, the dense model it was searched on",
        )
        parser.add_argument("output", help="OpenVINO IR directory")
        parser.add_argument(
            "--record", help="pruning_record.json (ours, or an official MultiPruner/BlockPruner JSON) to apply first"
        )
        parser.add_argument(
            "--num-blocks", type=int, help="entry of an official BlockPruner record to apply (default: the largest)"
        )
        parser.add_argument(
            "--weight-format", choices=WEIGHT_FORMATS,
            help="default: int8 if the dense model has >= 1e9 parameters, else fp32 (int4 adjusts group sizes)",
        )
        parser.add_argument("--disable-convert-tokenizer", action="store_true", help="skip the OpenVINO tokenizer")
        add_model_loading_args(parser)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")

    def run(self) -> None:
        from optimum_multipruner import MultiPruner
        from optimum_multipruner.exporters import export_openvino
        from optimum_multipruner.utils import check_output_dir

        args = self.args
        check_output_dir(args.output, args.overwrite)
        source = args.model
        tokenizer = None
        if args.record:
            source, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device)
            MultiPruner(source, tokenizer).apply(args.record, num_blocks=args.num_blocks)
        elif args.num_blocks is not None:
            raise ValueError("--num-blocks selects an entry of a BlockPruner record; it needs --record.")
        export_openvino(
            source,
            args.output,
            weight_format=args.weight_format,
            overwrite=args.overwrite,
            tokenizer=tokenizer,
            convert_tokenizer=not args.disable_convert_tokenizer,
        )
        print(f"Exported {args.model} to {args.output}")
