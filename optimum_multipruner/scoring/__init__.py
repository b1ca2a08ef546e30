"""Scoring search candidates by a calibration loss, plainly or accelerated, exactly or fast.

The objective (`importance_metric`) is the sum over calibration sequences of each sequence's mean next-token NLL
(`"ppl"`, the reference's: the lowest sum is the lowest perplexity) or mean KL divergence from the original unpruned
model's next-token distribution (`"kl"`; the original's hidden states entering the final norm are cached once per
calibration set, its log-probabilities recomputed chunk by chunk through the final norm and `lm_head`).

Two jobs, two classes: a [`CandidateSelector`] decides (the order of scoring, the rounds, the screen, the tie rule,
the choice), a [`CandidateEvaluator`] scores (a candidate on a prefix of the sequences, against a bound; the current
model's objective; committing a choice). [`ModelEvaluator`] scores on the model (the cache, the plain and
accelerated paths, the sharing of rounds between processes). A search uses
`CandidateSelector(ModelEvaluator(model, adapter, sequences, batch_size, ...), fast_search)`.

One module each: `accounting` (the work done, `SearchStats`), `race` (per-sequence tallies, their ranking and the tie
rule's test), `evaluator` (the interface), `model_evaluator` (scoring on the model), `selector` (the choice).

Under torch.distributed (`torchrun`, `accelerate launch`) every round is shared out between the processes, each
holding the whole model and cache (see `distributed.py`); each stops its candidates early against its own bound,
then every process receives every tally, so all make the choices one process makes, in both modes.
"""

from .accounting import SearchStats
from .evaluator import CandidateEvaluator, TrialFactory
from .model_evaluator import ModelEvaluator, final_hidden_states, original_final_hidden_states
from .race import Tally, rank_key, tied_with_leader
from .selector import CandidateSelector

__all__ = [
    "CandidateEvaluator",
    "CandidateSelector",
    "ModelEvaluator",
    "SearchStats",
    "Tally",
    "TrialFactory",
    "final_hidden_states",
    "original_final_hidden_states",
    "rank_key",
    "tied_with_leader",
]
