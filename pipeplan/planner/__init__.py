"""The planner: CP-SAT proposes cut points and recomputation per candidate, the simulator judges.

request.py     OptimizeRequest: the checked arguments of one search (layout fixed, open choices listed)
search.py      the search as steps over a request: bounded_candidates, solve_and_prune, rescore,
               polish, exhaustive, score_baselines, assemble
optimize.py    optimize(): the keyword API, a request then its search; result.py what it returns
candidates.py  the discrete choices (schedule, chunks, micro-batch size) and their lower bounds
problem.py     one candidate's integer data (costs, memory, the schedule's memory profiles)
cpsat.py       the CP-SAT model of one candidate
refine.py      the simulator's polish of a proposal (cut moves, transfers, recomputation)
baselines.py   Megatron uniform, DeepSpeed ``parameters`` splits
starts.py      judge(); the usual splits as polish starts and as baselines, brute force for small models
bounds.py, relaxation.py, dp_tail.py   lower bounds on the simulated time (per plan, per candidate)
layouts.py, layout_search.py, screen.py   the whole-configuration search over tp x pp x dp
clock.py       the clock deadlines are read on, and the pace of a search's simulations
infeasible.py  what would fit when nothing does
"""
