"""The planner: CP-SAT proposes cut points and recomputation per candidate, the simulator judges.

problem.py  one candidate's integer data (costs, memory, the schedule's memory profiles)
cpsat.py    the CP-SAT model of one candidate
candidates.py  the discrete choices (schedule, chunks, micro-batch size) and their lower bounds
baselines.py   Megatron uniform, DeepSpeed ``parameters``, brute force for small models
optimize.py    the outer loop; result.py what it returns
"""
