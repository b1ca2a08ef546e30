"""`optimum-cli multipruner export`: a pruned checkpoint (or a dense model + pruning record) to an OpenVINO IR
folder, or to a GGUF file for llama.cpp (`--format gguf`)."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from typing import Optional

from optimum_multipruner_constants import EXPORT_FORMATS, GGUF_OUTTYPES, WEIGHT_FORMATS

from .common import MultiPrunerSubcommand, add_model_loading_args, check_model_source, load_model_and_tokenizer
from .options import add_compensation_options, compensation_config


def export_format(given: Optional[str], output: str) -> str:
    """`--format`, or when not given the one the output's name asks for; an IR folder named `*.gguf` is refused."""
    named_gguf = output.lower().endswith(".gguf")
    if given is None:
        return "gguf" if named_gguf else EXPORT_FORMATS[0]
    if given != "gguf" and named_gguf:
        raise ValueError(f"The output {output} is named like a GGUF file but --format is {given}: drop --format (or "
                         "give --format gguf) for a GGUF file, or name the IR folder without .gguf.")
    return given


class ExportCommand(MultiPrunerSubcommand):
    HELP = ("Export a pruned model to OpenVINO IR or to GGUF for llama.cpp (or apply a pruning record to a dense "
            "model, then export).")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "-m", "--model", required=True,
            help="pruned checkpoint folder or Hub id; with --record, the dense model it was searched on",
        )
        parser.add_argument("output", help="OpenVINO IR folder, or the .gguf file with --format gguf")
        parser.add_argument(
            "--format", choices=EXPORT_FORMATS,
            help="openvino: an IR folder for optimum-intel / openvino-genai; gguf: one file for llama.cpp (default: "
            "gguf for an output ending in .gguf, else openvino)",
        )
        parser.add_argument(
            "--record", help="pruning_record.json (ours, or an official MultiPruner/BlockPruner JSON) to apply first"
        )
        parser.add_argument(
            "--num-blocks", type=int, help="entry of an official BlockPruner record to apply (default: the largest)"
        )
        parser.add_argument(
            "--weight-format", choices=WEIGHT_FORMATS,
            help="OpenVINO weights; default: int8 if the dense model has >= 1e9 parameters, else fp32 (int4 adjusts "
            "group sizes)",
        )
        parser.add_argument(
            "--outtype", choices=GGUF_OUTTYPES,
            help="GGUF tensor type (default f16); other llama.cpp types: llama-quantize on the f16 file",
        )
        parser.add_argument(
            "--disable-convert-tokenizer", action="store_true",
            help="skip the OpenVINO tokenizer models (openvino-genai's LLMPipeline needs them)",
        )
        add_compensation_options(parser)  # of the dense model --record is applied to
        add_model_loading_args(parser, placement=False)  # --dtype of the dense model --record is applied to
        parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")

    def execute(self) -> None:
        args = self.args
        gguf = export_format(args.format, args.output) == "gguf"
        if args.num_blocks is not None and not args.record:
            raise ValueError("--num-blocks selects an entry of a BlockPruner record; it needs --record.")
        compensation = compensation_config(args)
        if compensation is not None and not args.record:
            raise ValueError("--compensate refits the dense model --record is applied to; it needs --record (a "
                             "pruned checkpoint exports as it was saved).")
        if args.record and not os.path.exists(args.record):
            raise FileNotFoundError(f"The pruning record {args.record} does not exist; check the path.")
        if gguf and (args.weight_format or args.disable_convert_tokenizer):
            raise ValueError(
                "--weight-format and --disable-convert-tokenizer are OpenVINO options; a GGUF takes --outtype."
            )
        if not gguf and args.outtype:
            raise ValueError("--outtype is the GGUF tensor type; add --format gguf (OpenVINO takes --weight-format).")
        check_model_source(args.model)
        from optimum_multipruner import MultiPruner
        from optimum_multipruner.exporters import export_gguf, export_openvino
        from optimum_multipruner.utils import check_output_dir, check_output_file

        (check_output_file if gguf else check_output_dir)(args.output, args.overwrite)
        source, tokenizer, record = args.model, None, None
        if args.record:  # the pruned model is exported as it is in memory: no copy, no temporary checkpoint
            model, tokenizer = load_model_and_tokenizer(args)
            pruner = MultiPruner(model, tokenizer)
            source = pruner.apply(args.record, num_blocks=args.num_blocks, compensation=compensation)
            record = pruner.record
        if gguf:
            export_gguf(source, args.output, outtype=args.outtype or "f16", overwrite=args.overwrite,
                        tokenizer=tokenizer, record=record)
        else:
            export_openvino(
                source,
                args.output,
                weight_format=args.weight_format,
                overwrite=args.overwrite,
                tokenizer=tokenizer,
                record=record,
                convert_tokenizer=not args.disable_convert_tokenizer,
            )
        print(f"Exported {args.model} to {args.output}")
