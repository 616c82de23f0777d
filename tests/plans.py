"""A plan to vary in tests: llama3-8b on one dgx-h100 node, 1F1B, pp 8, even split."""
from pipeplan import Plan, even_split


def llama_plan(**changes) -> Plan:
    base = dict(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=8, num_microbatches=16,
                microbatch_size=1, layers_per_stage=even_split(34, 8))
    base.update(changes)
    return Plan(**base)
